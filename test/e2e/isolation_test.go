package e2e

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
)

// Issue 11, reproduced in the sandbox: a namespaced AzureIdentity in another namespace pairs a
// resource ID MIC can assign with the client ID of an identity bound only in the victim's
// namespace. MIC assigns the resource ID but, seeing that ARM reports another client ID for it,
// leaves the assignment Created with a Warning naming both; NMI (tested on its own in
// internal/nmi for both modes) would refuse the token even if it were Assigned. The attacker
// never gets the victim's token.
func TestNamespacedIdentityCannotBorrowAnotherClientID(t *testing.T) {
	t.Parallel()
	node := sb.Nodes[0].Name
	victimNS, evilNS := namespace(t), namespace(t)
	victim := azureIdentity(t, "victim")
	identity(t, victimNS, "victim-id", victim, nil)
	binding(t, victimNS, "victim-binding", "victim-id", victimNS)
	// The victim's identity sits on the node's VM/VMSS for a pod of its own.
	pod(t, victimNS, "holder", podOpts{Selector: victimNS, Node: node}, "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, victimNS, "holder")

	assignable := azureIdentity(t, "assignable")
	evil := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: evilNS, Name: "evil", Annotations: map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: assignable.ID, ClientID: victim.ClientID},
	}
	if err := crc(t).Create(ctxFor(t), evil); err != nil {
		t.Fatal(err)
	}
	binding(t, evilNS, "evil-binding", "evil", evilNS)
	before := sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: victim.ClientID})
	pod(t, evilNS, "attacker", podOpts{Selector: evilNS, Node: node}, "curl", "-s", "-H", "Metadata: true", tokenURL("&client_id="+victim.ClientID))

	warning := waitEvent(t, evilNS, "evil-binding", func(e corev1.Event) bool {
		return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, victim.ClientID) && strings.Contains(e.Message, assignable.ClientID)
	})
	t.Logf("MIC: %s", warning)
	r := httpResult(t, evilNS, "attacker")
	if r.Status == 200 {
		t.Fatalf("the attacker got a token with the victim's client ID: %s", r.Summary())
	}
	for _, a := range aais(ctxFor(t), t, evilNS) {
		if a.Status.Status == aadv1.AssignedIDAssigned {
			t.Errorf("AAI %s is Assigned although its identity's clientID is not ARM's for its resourceID", a.Name)
		}
	}
	if after := sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: victim.ClientID}); after != before {
		t.Errorf("IMDS issued %d tokens of the victim identity while the attacker asked", after-before)
	}
}

// Issue 11, reproduced in the sandbox: a namespaced service-principal identity naming another
// namespace's Secret gets nothing from it.
func TestServicePrincipalCannotUseAnotherNamespacesSecret(t *testing.T) {
	t.Parallel()
	victimNS, evilNS := namespace(t), namespace(t)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: victimNS, Name: "team-sp"}, StringData: map[string]string{"clientSecret": spSecret}}
	if _, err := sb.Client.CoreV1().Secrets(victimNS).Create(ctxFor(t), secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: evilNS, Name: "borrowed", Annotations: map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}},
		Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: sb.Emulator.Config().TenantID,
			ADEndpoint:     sb.Emulator.AADURL() + "/",
			ClientPassword: corev1.SecretReference{Name: "team-sp", Namespace: victimNS},
		},
	}
	if err := crc(t).Create(ctxFor(t), id); err != nil {
		t.Fatal(err)
	}
	binding(t, evilNS, "borrowed-binding", "borrowed", evilNS)
	pod(t, evilNS, "attacker", podOpts{Selector: evilNS}, "curl", "-s", "-H", "Metadata: true", tokenURL(""))
	r := httpResult(t, evilNS, "attacker")
	if r.Status != 403 || !strings.Contains(r.Error, "identity_refused") {
		t.Errorf("want 403 identity_refused, got %s", r.Summary())
	}
	ev := waitEvent(t, evilNS, "borrowed-binding", func(e corev1.Event) bool {
		return e.Type == corev1.EventTypeWarning && e.Reason == "IdentityRefused" && strings.Contains(e.Message, victimNS+"/team-sp")
	})
	t.Logf("NMI: %s", ev)
}

// waitEvent waits for an event on the named AzureIdentityBinding that matches and returns its
// message.
func waitEvent(t *testing.T, ns, bindingName string, match func(corev1.Event) bool) string {
	t.Helper()
	var msg string
	waitFor(t, "an event on binding "+ns+"/"+bindingName, func(ctx context.Context) (bool, error) {
		list, err := sb.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, e := range list.Items {
			if e.InvolvedObject.Kind == "AzureIdentityBinding" && e.InvolvedObject.Name == bindingName && match(e) {
				msg = e.Reason + ": " + e.Message
				return true, nil
			}
		}
		return false, nil
	})
	return msg
}
