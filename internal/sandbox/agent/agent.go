// Package agent is the sandbox node agent: it plays the kubelet's part for one sandbox node,
// for the sandbox's purpose only. It registers the Node with its Azure providerID, keeps it
// Ready (status and Lease heartbeats), and for every pod bound to the node creates a pod network
// namespace with a veth into the node's namespace, reports the pod's IP and phase, and runs each
// container as the probe client inside that namespace (hostNetwork pods: inside the node's).
// Exit codes drive restartPolicy, so Jobs complete and Deployments restart crashing containers.
//
// What it does not do: images, volumes, probes, resource limits, exec/logs through the API.
package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox/topology"
)

// PodIPAnnotation asks the agent for a specific pod address (used to test pod-IP reuse).
const PodIPAnnotation = "sandbox.podidentity.io/pod-ip"

// Config is one node agent's configuration.
type Config struct {
	Client kubernetes.Interface
	Log    logr.Logger
	// NodeName and ProviderID register the Node.
	NodeName, ProviderID string
	// Labels are added to the Node (kubernetes.io/hostname and os/arch are always set).
	Labels map[string]string
	// Taints are set on the Node when it is created (the sandbox's extra nodes keep other pods
	// away with them; pods naming the node in spec.nodeName still run, as with a kubelet).
	Taints []corev1.Taint
	// Net is the node's namespace and pod address pool.
	Net *topology.Node
	// PodNSPrefix starts the names of pod namespaces.
	PodNSPrefix string
	// ProbeClient is the probe-client binary; ProbeArgs are flags given before "--".
	ProbeClient string
	ProbeArgs   []string
	// Dir receives container logs.
	Dir string
	// LeaseInterval and StatusInterval are the heartbeat periods (kubelet: 10 s and 5 min, but
	// status also changes with conditions; 30 s here keeps `kubectl get nodes` fresh).
	LeaseInterval, StatusInterval time.Duration
	// RestartBase and RestartMax bound the crash-loop backoff (kubelet: 10 s, 5 min).
	RestartBase, RestartMax time.Duration
	// OnResult, when set, sees every probe-client result (the sandbox's summary uses it).
	OnResult func(pod *corev1.Pod, container string, r probeclient.Result)
}

// Agent is a running node agent.
type Agent struct {
	cfg Config
	log logr.Logger

	mu   sync.Mutex
	pods map[types.UID]*podRun
	wg   sync.WaitGroup
	seq  int
}

// New validates cfg and returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Net == nil || cfg.ProbeClient == "" || cfg.Dir == "" {
		return nil, errors.New("node agent config needs Client, NodeName, Net, ProbeClient and Dir")
	}
	if cfg.LeaseInterval <= 0 {
		cfg.LeaseInterval = 10 * time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 30 * time.Second
	}
	if cfg.RestartBase <= 0 {
		cfg.RestartBase = 10 * time.Second
	}
	if cfg.RestartMax < cfg.RestartBase {
		cfg.RestartMax = 30 * cfg.RestartBase
	}
	return &Agent{cfg: cfg, log: cfg.Log.WithValues("node", cfg.NodeName), pods: map[types.UID]*podRun{}}, nil
}

// Config returns the agent's configuration (the sandbox starts a fresh agent from it when a
// deleted node is added again).
func (a *Agent) Config() Config { return a.cfg }

// Register creates (or refreshes) the Node and its Lease and marks it Ready.
func (a *Agent) Register(ctx context.Context) error {
	c := a.cfg.Client
	labels := map[string]string{
		"kubernetes.io/hostname": a.cfg.NodeName,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
	}
	for k, v := range a.cfg.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: labels},
		Spec: corev1.NodeSpec{ProviderID: a.cfg.ProviderID, PodCIDR: a.cfg.Net.PodCIDR.String(), PodCIDRs: []string{a.cfg.Net.PodCIDR.String()},
			Taints: a.cfg.Taints},
	}
	got, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		got, err = c.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("registering node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.heartbeat(ctx, got); err != nil {
		return err
	}
	return a.renewLease(ctx)
}

// heartbeat writes the node's status, re-reading it when another writer (the node lifecycle
// controller) got there first.
func (a *Agent) heartbeat(ctx context.Context, node *corev1.Node) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if node == nil {
			n, err := a.cfg.Client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			node = n
		}
		err := a.updateNodeStatus(ctx, node)
		node = nil
		return err
	})
}

func (a *Agent) updateNodeStatus(ctx context.Context, node *corev1.Node) error {
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range node.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node.Status = corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "sandbox node"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "sandbox node"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "sandbox node"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "sandbox node agent is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: a.cfg.Net.IP.String()},
			{Type: corev1.NodeHostName, Address: a.cfg.NodeName},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion: "v1.37.2-sandbox", OperatingSystem: "linux", Architecture: "amd64",
			OSImage: "podidentity sandbox node", ContainerRuntimeVersion: "probe-client://sandbox",
		},
	}
	if _, err := a.cfg.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating status of node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

func (a *Agent) renewLease(ctx context.Context) error {
	leases := a.cfg.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(a.cfg.NodeName), LeaseDurationSeconds: ptr.To(int32(40)), RenewTime: &now,
			},
		}, metav1.CreateOptions{})
	} else if err == nil {
		l.Spec.RenewTime = &now
		l.Spec.HolderIdentity = ptr.To(a.cfg.NodeName)
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("renewing lease of node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

// Run registers the node, then heartbeats and runs the node's pods until ctx ends; then it stops
// every container and removes every pod namespace it made.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Register(ctx); err != nil {
		return err
	}
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := a.renewLease(ctx); err != nil && ctx.Err() == nil {
			a.log.Error(err, "lease heartbeat failed")
		}
	}, a.cfg.LeaseInterval)
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := a.heartbeat(ctx, nil); err != nil && ctx.Err() == nil {
			a.log.Error(err, "node status heartbeat failed")
		}
	}, a.cfg.StatusInterval)

	factory := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	queue := make(chan *corev1.Pod, 1024)
	enqueue := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			queue <- p
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.forget(p.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	for {
		select {
		case <-ctx.Done():
			factory.Shutdown()
			a.stopAll()
			return nil
		case p := <-queue:
			a.sync(ctx, p)
		}
	}
}

// sync starts a pod's run when it is new, and finishes a pod being deleted.
func (a *Agent) sync(ctx context.Context, pod *corev1.Pod) {
	a.mu.Lock()
	run := a.pods[pod.UID]
	a.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		go a.finishDeletion(ctx, pod, run)
		return
	}
	if run != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	a.mu.Lock()
	a.seq++
	rctx, cancel := context.WithCancel(ctx)
	run = &podRun{agent: a, pod: pod.DeepCopy(), cancel: cancel, done: make(chan struct{}),
		nsName: fmt.Sprintf("%sp%d", a.cfg.PodNSPrefix, a.seq)}
	a.pods[pod.UID] = run
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		run.run(rctx)
	}()
}

// finishDeletion stops the pod's containers, removes its network and deletes the object, as the
// kubelet does once a pod being deleted has stopped.
func (a *Agent) finishDeletion(ctx context.Context, pod *corev1.Pod, run *podRun) {
	if run != nil {
		run.stop()
	}
	err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)), Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
		a.log.Error(err, "deleting stopped pod", "pod", pod.Namespace+"/"+pod.Name)
	}
}

// PodNetNS is the network namespace a running pod's containers use (the node's for hostNetwork
// pods), so tests can run a real client, such as an Azure SDK, as that pod would.
func (a *Agent) PodNetNS(uid types.UID) (string, bool) {
	a.mu.Lock()
	run := a.pods[uid]
	a.mu.Unlock()
	if run == nil {
		return "", false
	}
	if run.pod.Spec.HostNetwork {
		return a.cfg.Net.NS, true
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	return run.nsName, run.net != nil
}

func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	run := a.pods[uid]
	a.mu.Unlock()
	if run != nil {
		go run.stop()
	}
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	runs := make([]*podRun, 0, len(a.pods))
	for _, r := range a.pods {
		runs = append(runs, r)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() { defer wg.Done(); r.stop() }()
	}
	wg.Wait()
	a.wg.Wait()
}

// podRun is one pod's life on this node.
type podRun struct {
	agent  *Agent
	pod    *corev1.Pod
	cancel context.CancelFunc
	done   chan struct{}
	nsName string

	stopOnce sync.Once

	mu        sync.Mutex
	net       *topology.Pod
	ip        string
	startTime metav1.Time
	phase     corev1.PodPhase
	reason    string
	initDone  bool
	init      []*ctr
	ctrs      []*ctr
	statusMu  sync.Mutex
}

type ctr struct {
	spec     corev1.Container
	restarts int32
	state    corev1.ContainerState
	last     corev1.ContainerState
}

// stop cancels the pod's run and waits until its containers are stopped and its network removed.
func (r *podRun) stop() {
	r.stopOnce.Do(func() { r.cancel() })
	<-r.done
}

func (r *podRun) logf(format string, args ...any) {
	r.agent.log.Info(fmt.Sprintf(format, args...), "pod", r.pod.Namespace+"/"+r.pod.Name)
}

func (r *podRun) run(ctx context.Context) {
	defer close(r.done)
	defer r.teardown()
	a := r.agent
	r.mu.Lock()
	r.startTime = metav1.Now()
	r.phase = corev1.PodPending
	for _, c := range r.pod.Spec.InitContainers {
		r.init = append(r.init, &ctr{spec: c, state: waiting("PodInitializing")})
	}
	for _, c := range r.pod.Spec.Containers {
		r.ctrs = append(r.ctrs, &ctr{spec: c, state: waiting("ContainerCreating")})
	}
	r.initDone = len(r.init) == 0
	r.mu.Unlock()

	ns, err := r.setupNetwork(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error(err, "setting up pod network", "pod", r.pod.Namespace+"/"+r.pod.Name)
			a.event(r.pod, "", corev1.EventTypeWarning, "FailedCreatePodSandBox", err.Error())
		}
		return
	}
	r.writeStatus(ctx)

	policy := r.pod.Spec.RestartPolicy
	for _, c := range r.init {
		// Init containers run once each, in order; a failure is retried unless restartPolicy
		// is Never, in which case the pod fails.
		for {
			code, err := r.runContainer(ctx, ns, c)
			if ctx.Err() != nil {
				return
			}
			if err == nil && code == 0 {
				break
			}
			if policy == corev1.RestartPolicyNever {
				r.finish(ctx, corev1.PodFailed, "InitContainerFailed")
				return
			}
			if !r.backoff(ctx, c) {
				return
			}
		}
	}
	r.mu.Lock()
	r.initDone = true
	r.mu.Unlock()

	var wg sync.WaitGroup
	codes := make([]int, len(r.ctrs))
	for i, c := range r.ctrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				code, err := r.runContainer(ctx, ns, c)
				if err != nil && code == 0 {
					code = 128
				}
				codes[i] = code
				if ctx.Err() != nil {
					return
				}
				if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) {
					return
				}
				if !r.backoff(ctx, c) {
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	phase := corev1.PodSucceeded
	for _, code := range codes {
		if code != 0 {
			phase = corev1.PodFailed
		}
	}
	r.finish(ctx, phase, "")
}

func waiting(reason string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}
}

// backoff waits before a restart (crash-loop backoff doubling per restart); false when stopped.
func (r *podRun) backoff(ctx context.Context, c *ctr) bool {
	a := r.agent
	d := a.cfg.RestartBase
	r.mu.Lock()
	for i := int32(1); i < c.restarts && d < a.cfg.RestartMax; i++ {
		d *= 2
	}
	if d > a.cfg.RestartMax {
		d = a.cfg.RestartMax
	}
	c.last = c.state
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
		Message: fmt.Sprintf("back-off %s restarting container %s", d, c.spec.Name)}}
	r.mu.Unlock()
	r.writeStatus(ctx)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		r.mu.Lock()
		c.restarts++
		r.mu.Unlock()
		return true
	}
}

// finish records a final phase and releases the pod's network, as the kubelet tears down the
// sandbox of a completed pod.
func (r *podRun) finish(ctx context.Context, phase corev1.PodPhase, reason string) {
	r.mu.Lock()
	r.phase, r.reason = phase, reason
	r.mu.Unlock()
	r.writeStatus(ctx)
	r.logf("pod finished: %s", phase)
}

func (r *podRun) setupNetwork(ctx context.Context) (string, error) {
	a := r.agent
	if r.pod.Spec.HostNetwork {
		r.mu.Lock()
		r.ip = a.cfg.Net.IP.String()
		r.mu.Unlock()
		return a.cfg.Net.NS, nil
	}
	var want netip.Addr
	if s := r.pod.Annotations[PodIPAnnotation]; s != "" {
		w, err := netip.ParseAddr(s)
		if err != nil {
			return "", fmt.Errorf("annotation %s=%q is not an IPv4 address: %w", PodIPAnnotation, s, err)
		}
		want = w
	}
	var ip netip.Addr
	// A requested address may still belong to a pod that is stopping: wait for it briefly.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		ip, err = a.cfg.Net.AllocateIP(want)
		return err == nil, nil
	})
	if err != nil {
		return "", fmt.Errorf("allocating a pod address on %s (wanted %v): %w", a.cfg.NodeName, want, err)
	}
	p, err := a.cfg.Net.AddPod(ctx, r.nsName, ip)
	if err != nil {
		a.cfg.Net.ReleaseIP(ip)
		return "", err
	}
	r.mu.Lock()
	r.net, r.ip = p, ip.String()
	r.mu.Unlock()
	return r.nsName, nil
}

func (r *podRun) teardown() {
	r.mu.Lock()
	p := r.net
	r.net = nil
	r.mu.Unlock()
	if p != nil {
		if err := p.Remove(context.Background()); err != nil {
			r.agent.log.Error(err, "removing pod network", "pod", r.pod.Namespace+"/"+r.pod.Name)
		}
	}
}

func (r *podRun) env(c corev1.Container) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + r.pod.Name}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = r.pod.Name
			case "metadata.namespace":
				v = r.pod.Namespace
			case "spec.nodeName":
				v = r.agent.cfg.NodeName
			case "status.podIP":
				v = r.ip
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}

// runContainer runs one container to its end and returns its exit code.
func (r *podRun) runContainer(ctx context.Context, ns string, c *ctr) (int, error) {
	a := r.agent
	dir := filepath.Join(a.cfg.Dir, "pods", fmt.Sprintf("%s_%s_%s", r.pod.Namespace, r.pod.Name, r.pod.UID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, c.spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	args := append([]string{"netns", "exec", ns, a.cfg.ProbeClient}, a.cfg.ProbeArgs...)
	args = append(args, "--")
	args = append(args, c.spec.Command...)
	args = append(args, c.spec.Args...)
	cmd := exec.Command("ip", args...)
	r.mu.Lock()
	cmd.Env = r.env(c.spec)
	r.mu.Unlock()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting container %s: %w", c.spec.Name, err)
	}
	r.mu.Lock()
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	if r.phase == corev1.PodPending && r.initDone {
		r.phase = corev1.PodRunning
	}
	r.mu.Unlock()
	r.writeStatus(ctx)

	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-stopped:
			case <-time.After(3 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case <-stopped:
		}
	}()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		if res, ok := probeclient.ParseResultLine(line); ok {
			r.result(c.spec.Name, res)
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	werr := cmd.Wait()
	close(stopped)
	code := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	r.mu.Lock()
	started := metav1.Now()
	if c.state.Running != nil {
		started = c.state.Running.StartedAt
	}
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason, StartedAt: started, FinishedAt: metav1.Now(),
	}}
	r.mu.Unlock()
	if ctx.Err() == nil {
		r.writeStatus(ctx)
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return code, werr
	}
	return code, nil
}

func (r *podRun) result(container string, res probeclient.Result) {
	a := r.agent
	reason, typ := "TokenAcquired", corev1.EventTypeNormal
	switch {
	case res.Kind == "http":
		reason = "HTTPResponse"
	case !res.OK:
		reason, typ = "TokenFailed", corev1.EventTypeWarning
	}
	a.event(r.pod, container, typ, reason, res.Summary())
	if a.cfg.OnResult != nil {
		a.cfg.OnResult(r.pod, container, res)
	}
}

// event records a pod Event under a unique name, so none is merged with or hidden by another.
func (a *Agent) event(pod *corev1.Pod, container, typ, reason, msg string) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name + "." + hex.EncodeToString(b), Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace,
			Name: pod.Name, UID: pod.UID},
		Reason: reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "sandbox-node-agent", Host: a.cfg.NodeName},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "podidentity.io/sandbox-node-agent", ReportingInstance: a.cfg.NodeName,
	}
	if container != "" {
		ev.InvolvedObject.FieldPath = "spec.containers{" + container + "}"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.cfg.Client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		a.log.V(1).Info("recording event failed", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "err", err.Error())
	}
}

// writeStatus writes the pod's status as the agent sees it now.
func (r *podRun) writeStatus(ctx context.Context) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	pods := r.agent.cfg.Client.CoreV1().Pods(r.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cur, err := pods.Get(ctx, r.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != r.pod.UID {
			return nil
		}
		r.fillStatus(&cur.Status)
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.agent.log.Error(err, "writing pod status", "pod", r.pod.Namespace+"/"+r.pod.Name)
	}
}

func (r *podRun) fillStatus(s *corev1.PodStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := metav1.Now()
	s.Phase = r.phase
	s.Reason = r.reason
	s.HostIP = r.agent.cfg.Net.IP.String()
	s.HostIPs = []corev1.HostIP{{IP: s.HostIP}}
	s.PodIP, s.PodIPs = "", nil
	if r.ip != "" {
		s.PodIP = r.ip
		s.PodIPs = []corev1.PodIP{{IP: r.ip}}
	}
	s.StartTime = &r.startTime
	status := func(cs []*ctr) []corev1.ContainerStatus {
		var out []corev1.ContainerStatus
		for _, c := range cs {
			out = append(out, corev1.ContainerStatus{
				Name: c.spec.Name, Image: c.spec.Image, ImageID: "sandbox://probe-client", RestartCount: c.restarts,
				State: c.state, LastTerminationState: c.last, Ready: c.state.Running != nil,
				Started: ptr.To(c.state.Running != nil), ContainerID: "sandbox://" + string(r.pod.UID) + "/" + c.spec.Name,
			})
		}
		return out
	}
	s.InitContainerStatuses = status(r.init)
	s.ContainerStatuses = status(r.ctrs)
	allReady := len(r.ctrs) > 0
	for _, c := range r.ctrs {
		allReady = allReady && c.state.Running != nil
	}
	if r.phase == corev1.PodSucceeded || r.phase == corev1.PodFailed {
		allReady = false
	}
	set := func(t corev1.PodConditionType, ok bool) {
		st := corev1.ConditionFalse
		if ok {
			st = corev1.ConditionTrue
		}
		for i := range s.Conditions {
			if s.Conditions[i].Type == t {
				if s.Conditions[i].Status != st {
					s.Conditions[i].Status, s.Conditions[i].LastTransitionTime = st, now
				}
				return
			}
		}
		s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: st, LastTransitionTime: now})
	}
	set(corev1.PodReadyToStartContainers, r.ip != "")
	set(corev1.PodInitialized, r.initDone)
	set(corev1.ContainersReady, allReady)
	set(corev1.PodReady, allReady)
}
