package main

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// deleteNode deletes f's node (its agent, its pods' containers and its NMI stop; the Node
// object goes) and adds it back after f.For, in the background. It notes what became of the
// node's pods: PodGC deletes them once the node has been missing 40-80 s, so a short window
// finds them again and a long one does not.
func (inj *injector) deleteNode(ctx context.Context, f chaos.Fault) (time.Time, func(context.Context) bool) {
	n := inj.sb.Nodes[f.Target%len(inj.sb.Nodes)]
	// In the background: stopping the node's pods takes seconds, and the next faults keep their
	// times (an emulator window started late could overlap the next one).
	inj.wg.Add(1)
	go func() {
		defer inj.wg.Done()
		before, err := podsOn(ctx, inj.sb, n.Name)
		if err != nil {
			inj.note("%s at %s: listing the pods of %s: %v", f.Kind, f.At, n.Name, err)
		}
		if err := inj.sb.DeleteNode(ctx, n.Name); err != nil {
			inj.note("%s at %s: %v", f.Kind, f.At, err)
			return
		}
		_, gerr := inj.sb.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		klog.InfoS("node deleted", "node", n.Name, "pods", len(before), "get", gerr)
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(inj.windowEnd(f))):
		}
		// Even at the end of the run the node comes back: the final checks need it.
		left, lerr := podsOn(context.Background(), inj.sb, n.Name)
		if err := inj.sb.ReAddNode(context.Background(), n.Name); err != nil {
			inj.note("%s at %s: adding %s back: %v", f.Kind, f.At, n.Name, err)
			return
		}
		inj.note("%s at %s: node %s deleted (a GET then: %v) for %s with %d pods bound to it; %d bound to it when it came back (list error %v): PodGC deletes them only after 40-80 s",
			f.Kind, f.At, n.Name, gerr, f.For, len(before), len(left), lerr)
	}()
	back := func(ctx context.Context) bool {
		if inj.sb.NodeDown(n.Name) {
			return false
		}
		node, err := inj.sb.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}
	return inj.windowEnd(f), back
}

// podsOn lists the names of the pods bound to node (spec.nodeName).
func podsOn(ctx context.Context, sb *sandbox.Sandbox, node string) ([]string, error) {
	l, err := sb.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l.Items))
	for _, p := range l.Items {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out, nil
}
