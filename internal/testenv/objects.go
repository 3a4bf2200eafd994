package testenv

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// VMProviderID is the spec.providerID of a node backed by a standalone VM.
func VMProviderID(subscription, resourceGroup, vm string) string {
	return fmt.Sprintf("azure:///subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s",
		subscription, resourceGroup, vm)
}

// VMSSProviderID is the spec.providerID of a node backed by a VM scale set instance.
func VMSSProviderID(subscription, resourceGroup, scaleSet string, instance int) string {
	return fmt.Sprintf("azure:///subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s/virtualMachines/%d",
		subscription, resourceGroup, scaleSet, instance)
}

// CreateNode creates a Ready node with the given Azure provider ID. Nodes are cluster-scoped, so
// the name should be unique per test (e.g. include the namespace).
func (e *Env) CreateNode(t testing.TB, name, providerID string) *corev1.Node {
	t.Helper()
	ctx := Context(t)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{ProviderID: providerID},
	}
	if err := e.Client.Create(ctx, node); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	if err := e.Client.Status().Update(ctx, node); err != nil {
		t.Fatalf("marking node %s Ready: %v", name, err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(Context(t), node) })
	return node
}

// PodSpec describes a pod for CreatePod.
type PodSpec struct {
	Namespace, Name, Node string
	// Binding is the value of the aadpodidbinding label; empty means no label.
	Binding string
	Labels  map[string]string
	// IP is status.podIP; empty leaves it unset.
	IP string
	// Phase defaults to Running.
	Phase corev1.PodPhase
	// HostNetwork marks a hostNetwork pod.
	HostNetwork bool
}

// CreatePod creates a pod that looks scheduled and running: spec.nodeName set, then phase and
// podIP written through the status subresource, as the kubelet would (no kubelet runs here).
func (e *Env) CreatePod(t testing.TB, p PodSpec) *corev1.Pod {
	t.Helper()
	ctx := Context(t)
	labels := map[string]string{}
	for k, v := range p.Labels {
		labels[k] = v
	}
	if p.Binding != "" {
		labels[aadv1.PodLabelKey] = p.Binding
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:    p.Node,
			HostNetwork: p.HostNetwork,
			Containers:  []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}
	if err := e.Client.Create(ctx, pod); err != nil {
		t.Fatalf("creating pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	phase := p.Phase
	if phase == "" {
		phase = corev1.PodRunning
	}
	e.SetPodStatus(t, pod, phase, p.IP)
	return pod
}

// SetPodStatus writes phase and podIP through the status subresource.
func (e *Env) SetPodStatus(t testing.TB, pod *corev1.Pod, phase corev1.PodPhase, ip string) {
	t.Helper()
	pod.Status.Phase = phase
	pod.Status.PodIP = ip
	pod.Status.PodIPs = nil
	if ip != "" {
		pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	if err := e.Client.Status().Update(Context(t), pod); err != nil {
		t.Fatalf("setting status of pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// Create creates obj and fails the test on error.
func (e *Env) Create(t testing.TB, obj client.Object) {
	t.Helper()
	if err := e.Client.Create(Context(t), obj); err != nil {
		t.Fatalf("creating %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}

// NewMSIIdentity returns a type-0 AzureIdentity for a user-assigned identity in the given
// subscription and resource group; clientID must be a GUID.
func NewMSIIdentity(namespace, name, subscription, resourceGroup, clientID string) *aadv1.AzureIdentity {
	return &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.UserAssignedMSI,
			ResourceID: fmt.Sprintf("/subscriptions/%s/resourcegroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s",
				subscription, resourceGroup, name),
			ClientID: clientID,
		},
	}
}

// NewBinding returns an AzureIdentityBinding of identity to selector.
func NewBinding(namespace, name, identity, selector string) *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
}
