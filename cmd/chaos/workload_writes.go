package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// writer makes the workload's writes and feeds every successful one's answer (the object with
// its resourceVersion, at the time the apiserver answered) into the checker's world, besides the
// watch: the workload is the only writer of labels, bindings and identities, so the checker
// knows every change of what binds a pod even while its watch is blind (chaos.World merges the
// two by resourceVersion).
type writer struct {
	c client.Client
	w *watcher // nil: no checker (unit use)
}

func (wr *writer) Create(ctx context.Context, o client.Object) error {
	if err := wr.c.Create(ctx, o); err != nil {
		return err
	}
	wr.observe(o, false)
	return nil
}

func (wr *writer) Update(ctx context.Context, o client.Object) error {
	if err := wr.c.Update(ctx, o); err != nil {
		return err
	}
	wr.observe(o, false)
	return nil
}

func (wr *writer) Patch(ctx context.Context, o client.Object, p client.Patch) error {
	if err := wr.c.Patch(ctx, o, p); err != nil {
		return err
	}
	wr.observe(o, false)
	return nil
}

// Delete deletes o. Pods are not recorded: a deleted pod terminates and stays bound until it is
// gone, which the watch reports (and its status changes too often for a precondition). Other
// objects are deleted exactly in the state read (a resourceVersion precondition), so that the
// checker may record the deletion as newer than that state.
func (wr *writer) Delete(ctx context.Context, o client.Object) error {
	if _, pod := o.(*corev1.Pod); pod {
		return wr.c.Delete(ctx, o)
	}
	rv := o.GetResourceVersion()
	if err := wr.c.Delete(ctx, o, client.Preconditions{ResourceVersion: &rv}); err != nil {
		return err
	}
	wr.observe(o, true)
	return nil
}

// observe applies one answered write to the checker's world and timeline.
func (wr *writer) observe(o client.Object, deleted bool) {
	if wr.w == nil {
		return
	}
	wr.w.mu.Lock()
	defer wr.w.mu.Unlock()
	var changed bool
	switch t := o.(type) {
	case *corev1.Pod:
		changed = wr.w.setPod(t, deleted)
	case *aadv1.AzureIdentity, *aadv1.AzureIdentityBinding:
		// The checker reads its CRDs as unstructured data, as from its watch.
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			klog.ErrorS(err, "the checker cannot read its own write", "kind", fmt.Sprintf("%T", o), "object", klog.KObj(o))
			return
		}
		u := &unstructured.Unstructured{Object: m}
		if _, ok := t.(*aadv1.AzureIdentity); ok {
			changed = wr.w.setIdentity(u, deleted)
		} else {
			changed = wr.w.setBinding(u, deleted)
		}
	default:
		return
	}
	if changed {
		// Bound from the answer (or the apiserver's record when earlier), unbound from the
		// answer too: the change happened between sending and answering, and a slow write (etcd
		// paused) must not shorten an interval, so both ends are lenient.
		wr.w.tl.Observe(time.Now(), wr.w.world)
	}
}
