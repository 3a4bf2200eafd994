package nmi

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// podInfo is the little NMI needs to know about a pod on this node. Informers feed it; the hot
// path reads it under a read lock.
type podInfo struct {
	Namespace, Name string
	UID             types.UID
	IP              string
	// ResourceVersion is compared (for equality only) when a grant is confirmed while the
	// watch catches up (currency_confirm.go).
	ResourceVersion string
	Phase           corev1.PodPhase
	Deleting        bool
	// ContainersExited: every container has terminated (the pod's processes are gone even if
	// the phase still says Running).
	ContainersExited bool
	// Selector is the value of the aadpodidbinding label (HasSelector: the label exists).
	Selector    string
	HasSelector bool
	Labels      map[string]string
	// ServiceAccount is spec.serviceAccountName ("default" when unset), which decides MIC's
	// IMDS passthrough: unlike labels and owner references, the pod's author cannot pick it
	// freely where RBAC limits who may use a ServiceAccount.
	ServiceAccount string
	// Created is the pod's creation time (the federation propagation window counts from it).
	Created time.Time
}

func (p *podInfo) key() string { return p.Namespace + "/" + p.Name }

// terminated pods keep their status.podIP after the IP has been handed to a new pod.
func (p *podInfo) terminated() bool {
	return p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed
}

// ending pods are on their way out: being deleted, or with every container exited. They are
// served no tokens, since their IP may already belong to a new pod. serveDeleting
// (--serve-deleting-pods) keeps serving a pod in its termination grace period while its
// containers run.
func (p *podInfo) ending(serveDeleting bool) bool {
	return p.ContainersExited || (p.Deleting && !serveDeleting)
}

// gone reports whether the pod may not be served at all (terminated or ending).
func (p *podInfo) gone(serveDeleting bool) bool { return p.terminated() || p.ending(serveDeleting) }

func newPodInfo(pod *corev1.Pod) *podInfo {
	pi := &podInfo{
		Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, IP: pod.Status.PodIP, ResourceVersion: pod.ResourceVersion,
		Phase: pod.Status.Phase, Deleting: pod.DeletionTimestamp != nil, Labels: pod.Labels,
		ContainersExited: allExited(pod.Status.ContainerStatuses), ServiceAccount: pod.Spec.ServiceAccountName,
		Created: pod.CreationTimestamp.Time,
	}
	if pi.ServiceAccount == "" {
		pi.ServiceAccount = "default"
	}
	pi.Selector, pi.HasSelector = pod.Labels[aadv1.PodLabelKey]
	// hostNetwork pods share the node's IP and never come through the DNAT rule: indexing them
	// by IP would let every host process pose as them.
	if pod.Spec.HostNetwork {
		pi.IP = ""
	}
	return pi
}

func allExited(cs []corev1.ContainerStatus) bool {
	if len(cs) == 0 {
		return false
	}
	for _, c := range cs {
		if c.State.Terminated == nil {
			return false
		}
	}
	return true
}

// aaiInfo is one AzureAssignedIdentity of a pod on this node.
type aaiInfo struct {
	Name, Namespace string
	PodKey          string
	// IdentityNamespace/IdentityName name the AzureIdentity the assignment is for; Identity is
	// MIC's copy of it at assignment time (what is actually on the VM).
	IdentityNamespace, IdentityName string
	Identity                        *aadv1.AzureIdentity
	State                           aadv1.AssignedIdentityState
}

func newAAIInfo(a *aadv1.AzureAssignedIdentity) *aaiInfo {
	ai := &aaiInfo{Name: a.Name, Namespace: a.Namespace, PodKey: a.Spec.PodNamespace + "/" + a.Spec.Pod,
		Identity: a.Spec.AzureIdentityRef, State: a.Status.Status}
	if ref := a.Spec.AzureIdentityRef; ref != nil {
		ai.IdentityNamespace, ai.IdentityName = ref.Namespace, ref.Name
	}
	return ai
}
