package mic

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// Controller is MIC's leader-only work loop. It implements manager.Runnable.
type Controller struct {
	log   logr.Logger
	cache cache.Cache
	c     client.Client // reads from the cache, writes to the API server
	api   client.Reader // uncached reads
	cloud cloud.Compute
	rec   events.EventRecorder
	m     *Metrics
	o     Options
	imm   map[string]bool

	trigger chan struct{}
	refresh atomic.Bool
	queue   workqueue.TypedRateLimitingInterface[string]
	snap    atomic.Pointer[snapshot]
	ov      *overlay
	own     *ownership
	q       *quarantine
	sa      *saBindings

	mu        sync.Mutex
	known     map[string]*knownState
	nodeRes   map[string]desired.Node
	firstSeen map[desired.Key]time.Time
	reported  map[string]bool
	gates     map[string]time.Time
}

type knownState struct {
	ids   cloud.Identities
	stale bool
}

type snapshot struct {
	st   *desired.State
	have map[string][]*aadv1.AzureAssignedIdentity
	res  map[string]cloud.Resource
	pods map[desired.Key]types.UID
}

// NewController wires a controller. c must read from cache; api must read from the API server.
func NewController(log logr.Logger, ca cache.Cache, c client.Client, api client.Reader, compute cloud.Compute, rec events.EventRecorder, m *Metrics, o Options) *Controller {
	o = o.Defaulted()
	return &Controller{
		log: log, cache: ca, c: c, api: api, cloud: compute, rec: rec, m: m, o: o, imm: o.immutableSet(),
		trigger: make(chan struct{}, 1),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](o.RetryBase, o.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "mic-resources"}),
		ov: newOverlay(), own: newOwnership(c, o.Namespace), q: newQuarantine(o.QuarantineBase, o.QuarantineMax), sa: newSABindings(),
		known: map[string]*knownState{}, nodeRes: map[string]desired.Node{}, firstSeen: map[desired.Key]time.Time{},
		reported: map[string]bool{}, gates: map[string]time.Time{},
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

func (c *Controller) watch(ctx context.Context) error {
	add := func(obj client.Object, changed func(old, new any) bool) error {
		return c.handle(ctx, obj, func(any, bool) bool { return true }, changed)
	}
	rvChanged := func(o, n any) bool {
		return o.(client.Object).GetResourceVersion() != n.(client.Object).GetResourceVersion()
	}
	podChanged := func(o, n any) bool {
		a, b := o.(*corev1.Pod), n.(*corev1.Pod)
		if !c.sa.selectable(a) && !c.sa.selectable(b) {
			return false
		}
		_, hadLabel := a.Labels[aadv1.PodLabelKey]
		_, hasLabel := b.Labels[aadv1.PodLabelKey]
		return a.Spec.NodeName != b.Spec.NodeName || a.Labels[aadv1.PodLabelKey] != b.Labels[aadv1.PodLabelKey] ||
			hadLabel != hasLabel || finished(a) != finished(b)
	}
	nodeChanged := func(o, n any) bool {
		return o.(*corev1.Node).Spec.ProviderID != n.(*corev1.Node).Spec.ProviderID
	}
	for _, w := range []struct {
		obj client.Object
		fn  func(o, n any) bool
	}{
		{&corev1.Node{}, nodeChanged}, {&aadv1.AzureIdentity{}, rvChanged},
	} {
		if err := add(w.obj, w.fn); err != nil {
			return err
		}
	}
	// Bindings update the ServiceAccount set before the pass is kicked (see saBindings).
	if err := c.handle(ctx, &aadv1.AzureIdentityBinding{}, func(o any, deleted bool) bool { c.sa.track(o, deleted); return true },
		func(o, n any) bool { c.sa.track(n, false); return rvChanged(o, n) }); err != nil {
		return err
	}
	if err := c.handle(ctx, &corev1.Pod{}, func(o any, _ bool) bool { return c.sa.selectable(o) }, podChanged); err != nil {
		return err
	}
	// For AAIs only what others do matters: MIC's own creates and deletes are already accounted
	// for (and at scale would start a pass per write burst).
	notOurs := func(o any, deleted bool) bool {
		if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		a, ok := o.(*aadv1.AzureAssignedIdentity)
		return !ok || !c.ov.ours(a, deleted)
	}
	return c.handle(ctx, &aadv1.AzureAssignedIdentity{}, notOurs, func(o, n any) bool {
		a, b := o.(*aadv1.AzureAssignedIdentity), n.(*aadv1.AzureAssignedIdentity)
		return a.DeletionTimestamp == nil && b.DeletionTimestamp != nil
	})
}

// handle kicks a planning pass on adds and deletes that pass relevant, and updates that pass changed.
func (c *Controller) handle(ctx context.Context, obj client.Object, relevant func(o any, deleted bool) bool, changed func(o, n any) bool) error {
	inf, err := c.cache.GetInformer(ctx, obj)
	if err != nil {
		return fmt.Errorf("watching %T: %w", obj, err)
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) {
			if relevant(o, false) {
				c.kick()
			}
		},
		UpdateFunc: func(o, n any) {
			if changed(o, n) {
				c.kick()
			}
		},
		DeleteFunc: func(o any) {
			if relevant(o, true) {
				c.kick()
			}
		},
	})
	return err
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// plan computes the desired state from the cache and queues every VM/VMSS that needs work.
func (c *Controller) plan(ctx context.Context) error {
	var pods corev1.PodList
	var nodes corev1.NodeList
	var ids aadv1.AzureIdentityList
	var bindings aadv1.AzureIdentityBindingList
	var aais aadv1.AzureAssignedIdentityList
	// Objects are only read here, never modified, so the cache's copies are used directly.
	nocopy := client.UnsafeDisableDeepCopy
	for _, l := range []struct {
		list client.ObjectList
		opts []client.ListOption
	}{
		{&pods, []client.ListOption{nocopy}},
		{&nodes, []client.ListOption{nocopy}}, {&ids, []client.ListOption{nocopy}}, {&bindings, []client.ListOption{nocopy}},
		{&aais, []client.ListOption{nocopy}},
	} {
		if err := c.c.List(ctx, l.list, l.opts...); err != nil {
			return fmt.Errorf("listing %T from the cache: %w", l.list, err)
		}
	}
	in := desired.Input{Pods: make([]desired.Pod, 0, len(pods.Items)), Options: desired.Options{
		ForceNamespaced: c.o.ForceNamespaced, KeepFinishedPods: c.o.KeepFinishedPods, RequireServiceAccount: c.o.RequireServiceAccountBindings}}
	uids := make(map[desired.Key]types.UID, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		in.Pods = append(in.Pods, desired.Pod{Namespace: p.Namespace, Name: p.Name, Selector: p.Labels[aadv1.PodLabelKey],
			ServiceAccount: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, Finished: finished(p)})
		uids[desired.Key{Namespace: p.Namespace, Name: p.Name}] = p.UID
	}
	c.mu.Lock()
	for i := range nodes.Items {
		n := &nodes.Items[i]
		r, _, err := cloud.ResourceForNode(n.Name, n.Spec.ProviderID, c.o.Defaults)
		// Remembered after the node is gone, so its AAIs can still be released on its VM/VMSS.
		c.nodeRes[n.Name] = desired.Node{Name: n.Name, Resource: r, Err: err}
	}
	in.Nodes = make(map[string]desired.Node, len(nodes.Items))
	for i := range nodes.Items {
		in.Nodes[nodes.Items[i].Name] = c.nodeRes[nodes.Items[i].Name]
	}
	nodeRes := c.nodeRes
	c.mu.Unlock()
	for i := range ids.Items {
		in.Identities = append(in.Identities, &ids.Items[i])
	}
	for i := range bindings.Items {
		in.Bindings = append(in.Bindings, &bindings.Items[i])
	}
	st := desired.Compute(in)

	c.mu.Lock()
	groupOf := func(a *aadv1.AzureAssignedIdentity) (string, cloud.Resource) {
		n, ok := nodeRes[a.Spec.NodeName]
		if !ok || n.Resource.IsZero() {
			return desired.UnresolvedGroup, cloud.Resource{}
		}
		return n.Resource.Key(), n.Resource
	}
	c.mu.Unlock()
	cached := make([]*aadv1.AzureAssignedIdentity, len(aais.Items))
	for i := range aais.Items {
		cached[i] = &aais.Items[i]
	}
	snap := &snapshot{st: st, have: map[string][]*aadv1.AzureAssignedIdentity{}, res: map[string]cloud.Resource{}, pods: uids}
	for _, a := range c.ov.apply(cached, nil) {
		gk, r := groupOf(a)
		snap.have[gk] = append(snap.have[gk], a)
		snap.res[gk] = r
	}
	for gk, g := range st.Groups {
		snap.res[gk] = g.Resource
	}
	c.snap.Store(snap)
	c.reportProblems(st.Problems)

	now := time.Now()
	refresh := c.refresh.Swap(false)
	c.mu.Lock()
	for k := range st.AAIs {
		if _, ok := c.firstSeen[k]; !ok {
			c.firstSeen[k] = now
		}
	}
	for k := range c.firstSeen {
		if _, ok := st.AAIs[k]; !ok {
			delete(c.firstSeen, k)
		}
	}
	if refresh {
		for _, k := range c.known {
			k.stale = true
		}
	}
	c.mu.Unlock()

	queued := 0
	for gk, r := range snap.res {
		if refresh && !r.IsZero() || c.needsWork(gk, snap) {
			c.queue.Add(gk)
			queued++
		}
	}
	c.m.ResourcesQueued.Set(float64(c.queue.Len()))
	c.m.Quarantined.Set(float64(c.q.size()))
	if queued > 0 {
		c.log.V(1).Info("planned", "pods", len(pods.Items), "identities", len(ids.Items), "bindings", len(bindings.Items),
			"assignedIdentities", len(aais.Items), "resourcesQueued", queued, "duration", time.Since(now))
	}
	return nil
}

// needsWork is true when Kubernetes objects differ from the desired state, an AAI waits for
// assignment, or ARM (as last known) lacks or holds identities it should not.
func (c *Controller) needsWork(gk string, s *snapshot) bool {
	var want []*desired.AAI
	var ids map[string]string
	if g := s.st.Groups[gk]; g != nil {
		want, ids = g.AAIs, g.Identities
	}
	ch := desired.Diff(want, s.have[gk])
	if !ch.Empty() {
		return true
	}
	for _, p := range ch.Keep {
		if p.Have.Status.Status == aadv1.AssignedIDCreated {
			return true
		}
	}
	if gk == desired.UnresolvedGroup {
		return false
	}
	c.mu.Lock()
	k := c.known[gk]
	c.mu.Unlock()
	if k == nil {
		return len(ids) > 0
	}
	if contradicted(ch.Keep, s.res[gk], k.ids) {
		return true
	}
	for id := range ids {
		if !k.ids.Has(id) {
			return true
		}
	}
	return false
}

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
			c.log.Error(err, "reconciling VM/VMSS failed; will retry with backoff", "resource", key)
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

func (c *Controller) reportProblems(ps []desired.Problem) {
	for _, p := range ps {
		k := string(p.Kind) + "|" + p.Object.String() + "|" + p.Message
		c.mu.Lock()
		seen := c.reported[k]
		c.reported[k] = true
		c.mu.Unlock()
		if seen {
			continue
		}
		c.log.Info("bad input: "+p.Message, "kind", p.ObjectKind, "object", p.Object.String(), "problem", p.Kind)
		if obj := refObject(p.ObjectKind, p.Object, ""); obj != nil {
			c.rec.Eventf(obj, nil, corev1.EventTypeWarning, string(p.Kind), "Validate", "%s", p.Message)
		}
	}
}

// refObject builds a minimal object of a kind for event references.
func refObject(kind string, k desired.Key, uid types.UID) runtime.Object {
	meta := func(o client.Object) client.Object {
		o.SetNamespace(k.Namespace)
		o.SetName(k.Name)
		o.SetUID(uid)
		return o
	}
	switch kind {
	case "Pod":
		return meta(&corev1.Pod{})
	case "Node":
		return meta(&corev1.Node{})
	case "AzureIdentity":
		return meta(&aadv1.AzureIdentity{})
	case "AzureIdentityBinding":
		return meta(&aadv1.AzureIdentityBinding{})
	}
	return nil
}
