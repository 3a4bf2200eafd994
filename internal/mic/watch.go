package mic

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// watch registers the informer event handlers: relevant events kick a planning pass.
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
