package e2e

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
)

// saRequiredNode is the extra node whose NMI runs with --require-service-account-bindings.
const saRequiredNode = "aks-nmisa-12345678-0"

// saBinding creates an AzureIdentityBinding of identity to the ServiceAccount sa in ns (and to
// selector, when not empty).
func saBinding(t *testing.T, ns, name, identity, selector, sa string) {
	t.Helper()
	b := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector, ServiceAccountName: sa}}
	if err := crc(t).Create(ctxFor(t), b); err != nil {
		t.Fatalf("creating AzureIdentityBinding %s/%s: %v", ns, name, err)
	}
}

// saPod creates a pod on node in ns that runs as the ServiceAccount sa (created when missing),
// with the aadpodidbinding label when selector is set, running cmd.
func saPod(t *testing.T, ns, name, node, selector, sa string, cmd ...string) {
	t.Helper()
	acct := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
	if _, err := sb.Client.CoreV1().ServiceAccounts(ns).Create(ctxFor(t), acct, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating ServiceAccount %s/%s: %v", ns, sa, err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, NodeName: node, ServiceAccountName: sa,
			TerminationGracePeriodSeconds: ptr.To(int64(5)),
			Containers:                    []corev1.Container{{Name: "app", Image: "mcr.microsoft.com/azure-cli", Command: cmd}},
		},
	}
	if selector != "" {
		p.Labels = map[string]string{aadv1.PodLabelKey: selector}
	}
	if _, err := sb.Client.CoreV1().Pods(ns).Create(ctxFor(t), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
}

func imdsTokens(clientID string) int64 {
	return sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: clientID})
}

// Issue 14: a binding that names a ServiceAccount serves the pods of its namespace that run as
// it; a pod with the same label but another ServiceAccount (same namespace or another) gets 403,
// and another namespace's binding naming the same ServiceAccount name grants nothing here.
func TestServiceAccountBindingServesOnlyItsServiceAccount(t *testing.T) {
	t.Parallel()
	node := sb.Nodes[0].Name
	ns, other := namespace(t), namespace(t)
	info := azureIdentity(t, "sa")
	identity(t, ns, "sa-id", info, nil)
	saBinding(t, ns, "sa-binding", "sa-id", ns, "app")
	foreign := azureIdentity(t, "sa-foreign")
	identity(t, other, "foreign-id", foreign, nil)
	saBinding(t, other, "foreign-binding", "foreign-id", "", "app")

	// The right pod keeps the identity on the node for the whole test, so only NMI can refuse.
	saPod(t, ns, "right", node, ns, "app", "sh", "-c", "az login --identity -u "+info.ClientID+" && sleep infinity")
	if r := firstToken(t, ns, "right"); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Fatalf("pod right got %s, want identity %s", r.Summary(), info.ClientID)
	}
	before := imdsTokens(info.ClientID)
	curl := []string{"curl", "-s", "-H", "Metadata: true", tokenURL("&client_id=" + info.ClientID)}
	saPod(t, ns, "other-sa", node, ns, "intruder", curl...)
	saPod(t, other, "other-namespace", node, ns, "app", curl...)
	saPod(t, ns, "foreign", node, "", "app", "curl", "-s", "-H", "Metadata: true", tokenURL("&client_id="+foreign.ClientID))
	for _, c := range []struct{ ns, pod string }{{ns, "other-sa"}, {other, "other-namespace"}, {ns, "foreign"}} {
		r := httpResult(t, c.ns, c.pod)
		if r.Status != 403 || !strings.Contains(r.Error, "identity_not_bound") {
			t.Errorf("pod %s/%s: got %s, want 403 identity_not_bound", c.ns, c.pod, r.Summary())
		}
	}
	if n := imdsTokens(info.ClientID) - before; n != 0 {
		t.Errorf("IMDS issued %d tokens of the ServiceAccount's identity to other pods", n)
	}
	if n := imdsTokens(foreign.ClientID); n != 0 {
		t.Errorf("IMDS issued %d tokens of the other namespace's identity", n)
	}
}

// Issue 14: on a node whose NMI requires ServiceAccount bindings, a label-only binding serves
// nothing (403; the Warning event on the binding names the fix) while a ServiceAccount binding
// works.
func TestRequireServiceAccountBindingsIgnoresLabelOnlyBindings(t *testing.T) {
	t.Parallel()
	node := extraNode(t, saRequiredNode).Name
	ns := namespace(t)
	byLabel, bySA := azureIdentity(t, "by-label"), azureIdentity(t, "by-sa")
	identity(t, ns, "by-label", byLabel, nil)
	identity(t, ns, "by-sa", bySA, nil)
	binding(t, ns, "label-only", "by-label", ns)
	saBinding(t, ns, "by-sa", "by-sa", "", "app")

	saPod(t, ns, "app", node, "", "app", "az", "login", "--identity")
	if r := firstToken(t, ns, "app"); !strings.EqualFold(r.ClientID, bySA.ClientID) {
		t.Fatalf("pod app got %s, want identity %s", r.Summary(), bySA.ClientID)
	}
	// MIC (which does not require them here) assigns the label-only binding's identity; NMI
	// still refuses it.
	saPod(t, ns, "labelled", node, ns, "default", "curl", "-s", "-H", "Metadata: true", tokenURL(""))
	r := httpResult(t, ns, "labelled")
	if r.Status != 403 || !strings.Contains(r.Error, "identity_not_bound") {
		t.Errorf("label-only binding: got %s (%s), want 403 identity_not_bound", r.Summary(), r.Error)
	}
	ev := waitEvent(t, ns, "label-only", func(e corev1.Event) bool {
		return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, ns+"/label-only") && strings.Contains(e.Message, "spec.serviceAccountName")
	})
	t.Logf("NMI: %s", ev)
	if n := imdsTokens(byLabel.ClientID); n != 0 {
		t.Errorf("IMDS issued %d tokens of the label-only binding's identity", n)
	}
}
