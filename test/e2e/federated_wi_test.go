package e2e

import (
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// wiNode is the extra node whose NMI honours Azure Workload Identity's ServiceAccount annotations.
const wiNode = "aks-nmiwi-12345678-0"

// Issue 15: with --honor-workload-identity-annotations, a pod that no binding selects, whose
// ServiceAccount carries azure.workload.identity/client-id and tenant-id, gets that client's
// token by federation (its own ServiceAccount as subject): an IMDS-only app that ran azwi's proxy
// sidecar works without it. A pod of an unannotated ServiceAccount gets nothing.
func TestFederatedWorkloadIdentityAnnotations(t *testing.T) {
	t.Parallel()
	node := extraNode(t, wiNode).Name
	ns := namespace(t)
	info := azureIdentity(t, "wi")
	fic(t, info, ns, "wi")
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wi", Annotations: map[string]string{
		"azure.workload.identity/client-id": info.ClientID, "azure.workload.identity/tenant-id": sb.Emulator.Config().TenantID}}}
	if _, err := sb.Client.CoreV1().ServiceAccounts(ns).Create(ctxFor(t), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	saPod(t, ns, "app", node, "", "wi", "az", "login", "--identity")
	if r := firstToken(t, ns, "app"); !strings.EqualFold(r.AppID, info.ClientID) || !strings.EqualFold(r.MIRID, info.ID) {
		t.Fatalf("annotated ServiceAccount's pod got %s, want %s", r.Summary(), info.ClientID)
	}
	if n := exchanges(info, ns, "wi"); n == 0 {
		t.Errorf("no exchange of the annotated ServiceAccount's token")
	}
	saPod(t, ns, "plain", node, "", "plain", "curl", "-s", "-H", "Metadata: true", tokenURL(""))
	if r := httpResult(t, ns, "plain"); r.Status == http.StatusOK {
		t.Errorf("a pod of an unannotated ServiceAccount got a token: %s", r.Summary())
	}
	onNoVM(t, info)
}
