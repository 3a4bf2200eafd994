package nmi

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/kubescheme"
)

// Watch starts the informers NMI answers from and feeds store. It returns once every informer
// has synced (or ctx ends). Pods are watched on this node only (field selector) and assignments
// by their nodename label; identities, bindings and exceptions cluster-wide (they are few).
func Watch(ctx context.Context, restCfg *rest.Config, cfg Config, store *Store, log logr.Logger) error {
	scheme := kubescheme.New()
	byObject := map[client.Object]cache.ByObject{
		&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName), Transform: slimPod},
	}
	standard := cfg.OperationMode != ModeManaged
	if standard {
		byObject[&aadv1.AzureAssignedIdentity{}] = cache.ByObject{
			Label: labels.SelectorFromSet(labels.Set{aadv1.AssignedIdentityNodeLabel: cfg.NodeName})}
	}
	store.view.configure(cfg.ViewSettle, log.WithName("currency"))
	c, err := cache.New(restCfg, cache.Options{Scheme: scheme, ByObject: byObject,
		DefaultTransform: cache.TransformStripManagedFields(),
		NewInformer:      store.view.newInformerTracked(kindNamer(scheme))})
	if err != nil {
		return fmt.Errorf("creating the informer cache: %w", err)
	}
	handlers := []watchHandler{
		{&corev1.Pod{}, func(o any) { store.UpsertPod(o.(*corev1.Pod)) }, store.DeletePod},
		{&aadv1.AzureIdentity{}, func(o any) { store.UpsertIdentity(o.(*aadv1.AzureIdentity)) }, store.DeleteIdentity},
		{&aadv1.AzureIdentityBinding{}, func(o any) { store.UpsertBinding(o.(*aadv1.AzureIdentityBinding)) }, store.DeleteBinding},
		{&aadv1.AzurePodIdentityException{}, func(o any) { store.UpsertException(o.(*aadv1.AzurePodIdentityException)) }, store.DeleteException},
	}
	if standard {
		handlers = append(handlers, watchHandler{&aadv1.AzureAssignedIdentity{}, func(o any) { store.UpsertAAI(o.(*aadv1.AzureAssignedIdentity)) }, store.DeleteAAI})
	}
	if cfg.HonorWorkloadIdentityAnnotations {
		handlers = append(handlers, serviceAccountHandler(store))
	}
	for _, h := range handlers {
		inf, err := c.GetInformer(ctx, h.obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", h.obj, err)
		}
		deleteF := h.deleteF
		_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    h.upsert,
			UpdateFunc: func(_, n any) { h.upsert(n) },
			DeleteFunc: func(o any) {
				if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
					o = d.Obj
				}
				if m, ok := o.(metav1.Object); ok {
					deleteF(m.GetNamespace(), m.GetName())
				}
			},
		})
		if err != nil {
			return fmt.Errorf("event handler for %T: %w", h.obj, err)
		}
	}
	go func() {
		if err := c.Start(ctx); err != nil {
			log.Error(err, "informer cache stopped")
		}
	}()
	if !c.WaitForCacheSync(ctx) {
		return fmt.Errorf("informers did not sync: check the API server address and NMI's RBAC (list/watch pods, azureassignedidentities, azureidentities, azureidentitybindings, azurepodidentityexceptions; serviceaccounts with --honor-workload-identity-annotations): %w", ctx.Err())
	}
	return nil
}

// kindNamer names an informer's kind for the currency tracker (metadata-only informers carry
// their kind in TypeMeta).
func kindNamer(scheme *runtime.Scheme) func(runtime.Object) viewKind {
	return func(o runtime.Object) viewKind {
		if k := o.GetObjectKind().GroupVersionKind().Kind; k != "" {
			return viewKind(k)
		}
		if gvks, _, err := scheme.ObjectKinds(o); err == nil && len(gvks) > 0 {
			return viewKind(gvks[0].Kind)
		}
		return viewKind(fmt.Sprintf("%T", o))
	}
}

// watchHandler feeds one kind into the store.
type watchHandler struct {
	obj     client.Object
	upsert  func(any)
	deleteF func(namespace, name string)
}

// slimPod keeps only what NMI reads, so 200 pods per node cost little memory.
func slimPod(o any) (any, error) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return o, nil
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels, CreationTimestamp: p.CreationTimestamp,
			OwnerReferences: p.OwnerReferences, DeletionTimestamp: p.DeletionTimestamp, ResourceVersion: p.ResourceVersion},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, ContainerStatuses: slimStatuses(p.Status.ContainerStatuses)},
	}, nil
}

// slimStatuses keeps whether each container has terminated, which is all podInfo reads.
func slimStatuses(cs []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(cs) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(cs))
	for i, c := range cs {
		out[i].Name = c.Name
		if c.State.Terminated != nil {
			out[i].State.Terminated = &corev1.ContainerStateTerminated{ExitCode: c.State.Terminated.ExitCode}
		}
	}
	return out
}
