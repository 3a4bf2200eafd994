package mic

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Controller is MIC's leader-only work loop: events → batched planning passes → per-VM/VMSS
// workers. It implements manager.Runnable. Each piece of state has its own owner (the fields
// below from ov on); the Controller only wires them.
type Controller struct {
	log   logr.Logger
	cache cache.Cache
	c     client.Client // reads from the cache, writes to the API server
	cloud cloud.Compute
	m     *Metrics
	o     Options
	imm   map[string]bool

	trigger chan struct{}
	refresh atomic.Bool
	queue   workqueue.TypedRateLimitingInterface[cloud.ResourceKey]
	snap    atomic.Pointer[snapshot]

	ov     *overlay
	own    *ownership
	q      *quarantine
	sa     *saBindings
	known  *armView
	nodes  *nodeResources
	gates  *gates
	notes  *notifier
	writer *aaiWriter
}

// newController wires a controller; o must be valid (Run validates it). c must read from the
// cache; api must read from the API server.
func newController(log logr.Logger, ca cache.Cache, c client.Client, api client.Reader, compute cloud.Compute, rec events.EventRecorder, m *Metrics, o Options) *Controller {
	ov := newOverlay()
	return &Controller{
		log: log, cache: ca, c: c, cloud: compute, m: m, o: o, imm: o.immutableSet(),
		trigger: make(chan struct{}, 1),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cloud.ResourceKey](o.RetryBase, o.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[cloud.ResourceKey]{Name: "mic-resources"}),
		ov: ov, own: newOwnership(c, o.Namespace), q: newQuarantine(o.QuarantineBase, o.QuarantineMax), sa: newSABindings(),
		known: newARMView(), nodes: newNodeResources(), gates: newGates(), notes: newNotifier(log, rec, m),
		writer: &aaiWriter{log: log, c: c, api: api, m: m, ov: ov},
	}
}

// NeedLeaderElection makes the controller run on the leader only.
func (c *Controller) NeedLeaderElection() bool { return true }

func (c *Controller) kick() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// Start runs until ctx ends (lease lost or shutdown).
func (c *Controller) Start(ctx context.Context) error {
	if err := c.run(ctx); err != nil {
		return fmt.Errorf("%w: %w", errRunnable, err)
	}
	return nil
}

func (c *Controller) run(ctx context.Context) error {
	c.m.NewLeader.Inc()
	c.log.Info("became leader; starting")
	if err := c.watch(ctx); err != nil {
		return err
	}
	if !c.cache.WaitForCacheSync(ctx) {
		return errors.New("informer caches did not sync before the controller stopped")
	}
	var wg sync.WaitGroup
	for i := 0; i < c.o.Workers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); c.work(ctx) }()
	}
	go func() { <-ctx.Done(); c.queue.ShutDown() }()
	resync := time.NewTicker(c.o.ResyncInterval)
	recon := time.NewTicker(c.o.ReconcileInterval)
	defer resync.Stop()
	defer recon.Stop()
	c.kick()
	// The first pass needs no batching: the caches are synced, the whole backlog is there at once.
	first := true
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			c.log.Info("stopped")
			return nil
		case <-resync.C:
			c.kick()
			continue
		case <-recon.C:
			c.refresh.Store(true)
			c.kick()
			continue
		case <-c.trigger:
		}
		if !first {
			c.batch(ctx)
		}
		first = false
		if ctx.Err() != nil {
			continue
		}
		start := time.Now()
		if err := c.plan(ctx); err != nil {
			c.log.Error(err, "planning pass failed; retrying")
			time.AfterFunc(c.o.RetryBase, c.kick)
		}
		c.m.CycleDuration.Observe(time.Since(start).Seconds())
		c.m.CycleCount.Inc()
	}
}

// batch waits until events stop for BatchIdle, or BatchMax after the first one.
func (c *Controller) batch(ctx context.Context) {
	deadline := time.NewTimer(c.o.BatchMax)
	defer deadline.Stop()
	idle := time.NewTimer(c.o.BatchIdle)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-idle.C:
			return
		case <-c.trigger:
			if !idle.Stop() {
				<-idle.C
			}
			idle.Reset(c.o.BatchIdle)
		}
	}
}

// work reconciles queued VMs/VMSS until the queue shuts down.
func (c *Controller) work(ctx context.Context) {
	for {
		key, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		after, err := c.process(ctx, key)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			c.log.Error(err, "reconciling VM/VMSS failed; will retry with backoff", "resource", key.String())
			c.queue.AddRateLimited(key)
		default:
			c.queue.Forget(key)
			if after > 0 {
				c.queue.AddAfter(key, after)
			}
		}
		c.queue.Done(key)
		c.m.ResourcesQueued.Set(float64(c.queue.Len()))
	}
}

// process reconciles one VM/VMSS (or, for the zero key, the pods on unmapped nodes) against the
// latest snapshot.
func (c *Controller) process(ctx context.Context, key cloud.ResourceKey) (time.Duration, error) {
	snap := c.snap.Load()
	if snap == nil {
		return 0, nil
	}
	in := snap.input(key, c.ov)
	r := &resourceRun{in: in, snap: snap, log: c.log.WithValues("resource", in.res.String()), notes: c.notes, writer: c.writer,
		ov: c.ov, q: c.q, kubeWrites: c.o.KubeWrites, quarantined: c.m.Quarantined}
	if !key.IsZero() {
		r.arm = &armStep{cloud: c.cloud, gates: c.gates, known: c.known, own: c.own, q: c.q, imm: c.imm, chunkSize: c.o.ChunkSize,
			log: r.log, key: key, res: in.res, wait: &r.wait, notes: c.notes, aais: in.want}
	}
	return r.reconcile(ctx)
}
