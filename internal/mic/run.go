package mic

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/kubescheme"
)

// RunConfig is what Run needs besides Options.
type RunConfig struct {
	Rest    *rest.Config
	Compute cloud.Compute
	Options Options
	Log     logr.Logger

	LeaderElection            bool
	LeaseName, LeaseNamespace string
	LeaseDuration             time.Duration
	ProbeAddr, MetricsAddr    string // "host:port"; "0" disables
	GracefulShutdown          time.Duration
	Metrics                   *Metrics // nil: created and registered with controller-runtime's registry
	OnController              func(*Controller)
}

// ErrLeaseLost means this replica lost the lease; Run then starts over as a standby.
var ErrLeaseLost = errors.New("leader lease lost")

// Run runs MIC until ctx ends. Losing the lease stops the work loop cleanly; the replica then
// stands by for the lease again instead of exiting (upstream exited and crash-looped).
func Run(ctx context.Context, rc RunConfig) error {
	if err := rc.Options.Validate(); err != nil {
		return err
	}
	if rc.Metrics == nil {
		rc.Metrics = NewMetrics(metrics.Registry)
	}
	ranBefore := false
	backoff := time.Second
	for {
		err := runOnce(ctx, rc)
		if ctx.Err() != nil {
			return nil
		}
		wait := 500 * time.Millisecond
		switch {
		case errors.Is(err, ErrLeaseLost):
			rc.Log.Info("lost the leader lease; standing by to be elected again")
			// The probe and metrics listeners are re-opened by the next manager; give the
			// kernel a moment to free the ports.
			ranBefore, backoff = true, time.Second
		case errors.Is(err, errSetup) && ranBefore:
			// The lease is usually lost because the apiserver went away, and the next manager
			// cannot be built until it is back (discovery fails). The same configuration
			// worked before, so this is an outage, not a mistake: wait for it to end instead
			// of exiting. At first start a setup error still ends Run, so a wrong kubeconfig
			// is reported at once.
			rc.Log.Info("cannot reach the apiserver to stand by again; retrying", "error", err.Error(), "in", backoff.String())
			wait, backoff = backoff, min(2*backoff, 30*time.Second)
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// errSetup marks failures to build the manager (as opposed to failures while it ran).
var errSetup = errors.New("setting up MIC")

func runOnce(ctx context.Context, rc RunConfig) error {
	o := rc.Options
	lease := rc.LeaseDuration
	if lease <= 0 {
		lease = 15 * time.Second
	}
	renew, retry := lease/2, lease/4
	mopts := manager.Options{
		Scheme: kubescheme.New(),
		Logger: rc.Log,
		// MIC runs with the chart's RBAC, not as admin: it may list and watch cluster-wide only
		// what the cache warmer starts (pods, nodes, the CRDs), and ConfigMaps only in its own
		// namespace (a Role). A cached ConfigMap read would start a cluster-wide informer whose
		// list is forbidden, and block. So the ownership records are read from the API server:
		// fresh after a conflict or a leader change, one GET per VM/VMSS per term.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.ConfigMap{}}}},
		Cache: cache.Options{
			// A cached read of a kind the warmer did not start fails at once (and names the kind)
			// instead of silently starting an informer the chart's RBAC may not allow.
			ReaderFailOnMissingInformer: true,
			DefaultTransform:            cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				// Every pod may matter (a ServiceAccount binding needs no label), but only a few
				// fields of each: keeps RSS flat at scale.
				&corev1.Pod{}:  {Transform: slimPod},
				&corev1.Node{}: {Transform: slimNode},
			},
		},
		LeaderElection:                rc.LeaderElection,
		LeaderElectionResourceLock:    "leases",
		LeaderElectionID:              rc.LeaseName,
		LeaderElectionNamespace:       rc.LeaseNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &lease,
		RenewDeadline:                 &renew,
		RetryPeriod:                   &retry,
		HealthProbeBindAddress:        rc.ProbeAddr,
		Metrics:                       metricsserver.Options{BindAddress: rc.MetricsAddr},
		GracefulShutdownTimeout:       &rc.GracefulShutdown,
	}
	mgr, err := manager.New(rc.Rest, mopts)
	if err != nil {
		return fmt.Errorf("%w: creating the controller manager (check --kubeconfig and that the apiserver is reachable): %w", errSetup, err)
	}
	var synced atomic.Bool
	if err := mgr.Add(&cacheWarmer{cache: mgr.GetCache(), synced: &synced}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("caches", func(*http.Request) error {
		if !synced.Load() {
			return errors.New("informer caches not synced yet")
		}
		return nil
	}); err != nil {
		return err
	}
	ctl := newController(rc.Log.WithName("controller"), mgr.GetCache(), mgr.GetClient(), mgr.GetAPIReader(), rc.Compute,
		mgr.GetEventRecorder("aadpodidentity.k8s.io"), rc.Metrics, o)
	if rc.OnController != nil {
		rc.OnController(ctl)
	}
	if err := mgr.Add(ctl); err != nil {
		return err
	}
	err = mgr.Start(ctx)
	if leaseLost(ctx, mgr, err) {
		return fmt.Errorf("%w: %w", ErrLeaseLost, err)
	}
	return err
}

// errRunnable marks the errors of MIC's own runnables.
var errRunnable = errors.New("MIC stopped")

// leaseLost tells whether mgr.Start ended because the lease was lost. The manager reports that
// only with an error of its own, not a sentinel; once elected, the only other errors that end it
// are those of MIC's runnables, which carry errRunnable.
func leaseLost(ctx context.Context, mgr manager.Manager, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, errRunnable) {
		return false
	}
	select {
	case <-mgr.Elected():
		return true
	default:
		return false
	}
}

// cacheWarmer starts the informers MIC reads on every replica, leader or standby, and marks
// readiness once they are synced. A standby is then ready (and not restarted by its probe), and a
// new leader starts with a warm cache instead of listing everything after the failover.
type cacheWarmer struct {
	cache  cache.Cache
	synced *atomic.Bool
}

// NeedLeaderElection is false: the warmer runs on standbys too.
func (w *cacheWarmer) NeedLeaderElection() bool { return false }

func (w *cacheWarmer) Start(ctx context.Context) error {
	for _, obj := range []client.Object{&corev1.Pod{}, &corev1.Node{}, &aadv1.AzureIdentity{},
		&aadv1.AzureIdentityBinding{}, &aadv1.AzureAssignedIdentity{}} {
		if _, err := w.cache.GetInformer(ctx, obj); err != nil {
			return fmt.Errorf("%w: starting the informer for %T: %w", errRunnable, obj, err)
		}
	}
	if w.cache.WaitForCacheSync(ctx) {
		w.synced.Store(true)
	}
	<-ctx.Done()
	return nil
}

func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: metav1ObjectMeta(p.Name, p.Namespace, p.UID, p.ResourceVersion, p.Labels, p.DeletionTimestamp != nil),
		Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName},
		Status:     corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{TypeMeta: n.TypeMeta,
		ObjectMeta: metav1ObjectMeta(n.Name, "", n.UID, n.ResourceVersion, nil, false),
		Spec:       corev1.NodeSpec{ProviderID: n.Spec.ProviderID}}, nil
}

// Cleanup is the way out when MIC is uninstalled or a namespace is stuck terminating: it removes
// MIC's finalizer from every AzureAssignedIdentity (all namespaces) and deletes them. Identities
// stay on the VMs/VMSS (remove them with az if wanted: the ownership ConfigMaps list what MIC
// assigned). It returns how many objects it released.
func Cleanup(ctx context.Context, c client.Client, log logr.Logger) (int, error) {
	var list aadv1.AzureAssignedIdentityList
	if err := c.List(ctx, &list); err != nil {
		return 0, fmt.Errorf("listing AzureAssignedIdentities: %w", err)
	}
	n := 0
	for i := range list.Items {
		h := &list.Items[i]
		if slices.Contains(h.Finalizers, aadv1.AssignedIdentityFinalizer) {
			obj := h.DeepCopy()
			obj.Finalizers = slices.DeleteFunc(obj.Finalizers, func(f string) bool { return f == aadv1.AssignedIdentityFinalizer })
			if err := c.Patch(ctx, obj, client.MergeFrom(h)); err != nil && !apierrors.IsNotFound(err) {
				return n, fmt.Errorf("removing the finalizer of AzureAssignedIdentity %s/%s: %w", h.Namespace, h.Name, err)
			}
		}
		if h.DeletionTimestamp == nil {
			if err := c.Delete(ctx, h); err != nil && !apierrors.IsNotFound(err) {
				return n, fmt.Errorf("deleting AzureAssignedIdentity %s/%s: %w", h.Namespace, h.Name, err)
			}
		}
		n++
		log.V(1).Info("released", "assignedIdentity", h.Namespace+"/"+h.Name)
	}
	return n, nil
}
