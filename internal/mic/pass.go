package mic

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// plan is one planning pass: it lists the caches, computes the desired state, stores it as the
// snapshot the workers read, and queues every VM/VMSS. Whether a VM/VMSS needs work is decided
// by its worker, once, from the snapshot (a VM/VMSS in sync costs a diff and no call).
func (c *Controller) plan(ctx context.Context) error {
	start := time.Now()
	var pods corev1.PodList
	var nodes corev1.NodeList
	var ids aadv1.AzureIdentityList
	var bindings aadv1.AzureIdentityBindingList
	var aais aadv1.AzureAssignedIdentityList
	for _, l := range []client.ObjectList{&pods, &nodes, &ids, &bindings, &aais} {
		// Objects are only read here, never modified, so the cache's copies are used directly.
		if err := c.c.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("listing %T from the cache: %w", l, err)
		}
	}
	in := desired.Input{Pods: make([]desired.Pod, 0, len(pods.Items)), Options: desired.Options{
		ForceNamespaced: c.o.ForceNamespaced, KeepFinishedPods: c.o.KeepFinishedPods,
		RequireServiceAccount: c.o.RequireServiceAccountBindings, SkipFederated: c.o.SkipFederatedAssignments}}
	uids := make(map[types.NamespacedName]types.UID, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		in.Pods = append(in.Pods, desired.Pod{Namespace: p.Namespace, Name: p.Name, Selector: p.Labels[aadv1.PodLabelKey],
			ServiceAccount: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, Finished: finished(p)})
		uids[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}] = p.UID
	}
	var allNodes map[string]desired.Node
	in.Nodes, allNodes = c.nodes.resolve(nodes.Items, c.o.Defaults)
	for i := range ids.Items {
		in.Identities = append(in.Identities, &ids.Items[i])
	}
	for i := range bindings.Items {
		in.Bindings = append(in.Bindings, &bindings.Items[i])
	}
	st := desired.Compute(in)

	cached := make([]*aadv1.AzureAssignedIdentity, len(aais.Items))
	for i := range aais.Items {
		cached[i] = &aais.Items[i]
	}
	c.ov.prune(cached)
	snap := newSnapshot(st, allNodes, uids, cached)
	c.snap.Store(snap)
	c.notes.pass(st, start)
	if c.refresh.Swap(false) {
		c.known.markAllStale()
	}
	for k := range snap.res {
		c.queue.Add(k)
	}
	c.m.ResourcesQueued.Set(float64(c.queue.Len()))
	c.m.Quarantined.Set(float64(c.q.size()))
	c.log.V(2).Info("planned", "pods", len(pods.Items), "identities", len(ids.Items), "bindings", len(bindings.Items),
		"assignedIdentities", len(aais.Items), "resources", len(snap.res), "duration", time.Since(start))
	return nil
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
