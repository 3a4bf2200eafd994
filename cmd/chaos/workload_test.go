package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// A Job's pod that ran to completion is not running: the checker owes it no token.
func TestCompletedJobPodIsNotRunning(t *testing.T) {
	spec := jobSpec("sel-b", "", corev1.RestartPolicyNever)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: nsB, Name: "job-1-x", Labels: spec.Template.Labels},
		Spec: spec.Template.Spec, Status: corev1.PodStatus{Phase: corev1.PodSucceeded}}
	if got := podFromObject(p); got.Running || got.Selector != "sel-b" {
		t.Errorf("completed Job pod read as %+v, want not running, selector sel-b", got)
	}
	p.Status.Phase = corev1.PodRunning
	if !podFromObject(p).Running {
		t.Error("running Job pod read as not running")
	}
}

// The write path reads typed objects through the same unstructured reading as the watch: the
// identity's client ID and namespaced annotation, and the binding, as written.
func TestWriteAnswersReachTheWorld(t *testing.T) {
	w := newWatcher(nil)
	wr := &writer{w: w}
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: "std-a", ResourceVersion: "7",
		Annotations: map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}},
		Spec: aadv1.AzureIdentitySpec{ClientID: "cid-a", ResourceID: "/x/a"}}
	wr.observe(id, false)
	b := binding(nsA, "bind-a", "std-a", "sel-a", "")
	b.ResourceVersion = "8"
	wr.observe(b, false)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: "p", ResourceVersion: "9", Labels: map[string]string{aadv1.PodLabelKey: "sel-a"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	wr.observe(p, false)
	got := w.world.Identities[types.NamespacedName{Namespace: nsA, Name: "std-a"}]
	if got.ClientID != "cid-a" || !got.Namespaced {
		t.Errorf("identity read from the write as %+v", got)
	}
	if iv := w.tl.Intervals(types.NamespacedName{Namespace: nsA, Name: "p"}, "cid-a"); len(iv) != 1 {
		t.Errorf("intervals after the writes: %v, want one open", iv)
	}
	wr.observe(b, true)
	if iv := w.tl.Intervals(types.NamespacedName{Namespace: nsA, Name: "p"}, "cid-a"); len(iv) != 1 || iv[0].To.IsZero() {
		t.Errorf("intervals after deleting the binding: %v, want one closed", iv)
	}
}
