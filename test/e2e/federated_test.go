package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
	"github.com/podidentity/podidentity/internal/sandbox/netns"
)

// fedIdentity creates an emulated identity and a federated AzureIdentity for it in ns (every
// spec.federation default), the way sandbox's federated demo does.
func fedIdentity(t *testing.T, ns, name string) emulator.IdentityInfo {
	t.Helper()
	info := azureIdentity(t, name)
	id, err := sb.FederatedIdentityObject(ns, name, info.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := crc(t).Create(ctxFor(t), id); err != nil {
		t.Fatalf("creating federated AzureIdentity %s/%s: %v", ns, name, err)
	}
	return info
}

// fic adds to info a federated credential for the sandbox issuer and ns/sa.
func fic(t *testing.T, info emulator.IdentityInfo, ns, sa string) {
	t.Helper()
	if err := sb.Emulator.AddFederatedCredential(info.Name, emulator.FederatedCredentialConfig{
		Name: "fic-" + sa + "-" + suffix(), Issuer: sb.Issuer, Subject: sandbox.FederatedSubject(ns, sa)}); err != nil {
		t.Fatalf("adding a federated credential for %s/%s to %s: %v", ns, sa, info.Name, err)
	}
}

func exchanges(info emulator.IdentityInfo, ns, sa string) int64 {
	return sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken,
		Identity: info.ClientID, Subject: sandbox.FederatedSubject(ns, sa), Status: http.StatusOK})
}

// micDone waits until MIC wrote the running pod's AzureAssignedIdentity (Assigned at once for a
// federated identity, without ARM), so a check of the VMs after it sees MIC's decision.
func micDone(t *testing.T, ns, podName string) {
	t.Helper()
	waitFor(t, "MIC's AzureAssignedIdentity for "+ns+"/"+podName, func(ctx context.Context) (bool, error) {
		for _, a := range aais(ctx, t, ns) {
			if a.Spec.Pod == podName && a.Status.Status == aadv1.AssignedIDAssigned {
				return true, nil
			}
		}
		return false, nil
	})
}

// onNoVM fails the test when any VM or scale set of the sandbox holds the identity, or IMDS
// issued one of its tokens.
func onNoVM(t *testing.T, info emulator.IdentityInfo) {
	t.Helper()
	for _, n := range sb.Nodes {
		if assigned(t, nodeResource(n), info.ID) {
			t.Errorf("federated identity %s is on %s: MIC must never assign it", info.Name, nodeResource(n))
		}
	}
	if n := imdsTokens(info.ClientID); n != 0 {
		t.Errorf("IMDS issued %d tokens of federated identity %s", n, info.Name)
	}
}

func running(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	waitFor(t, "pod "+ns+"/"+name+" Running", func(ctx context.Context) (bool, error) {
		var err error
		p, err = sb.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	return p
}

// Issue 15: an unchanged application (the probe client, and the official Go SDK's
// ManagedIdentityCredential run from inside the pod's network namespace) gets a token of the
// federated identity, with its appid and xms_mirid, from Azure AD by federation: the identity is on
// no VM or scale set and IMDS never issued one of its tokens.
func TestFederatedUnchangedClientsGetTokens(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[0].Name
	info := fedIdentity(t, ns, "fed")
	fic(t, info, ns, "app")
	saBinding(t, ns, "fed", "fed", "", "app")

	saPod(t, ns, "probe", node, "", "app", "az", "login", "--identity")
	r := firstToken(t, ns, "probe")
	if !strings.EqualFold(r.AppID, info.ClientID) || !strings.EqualFold(r.MIRID, info.ID) || !armToken(r) {
		t.Errorf("probe client got %s (appid %s, xms_mirid %s), want %s (%s)", r.Summary(), r.AppID, r.MIRID, info.ClientID, info.ID)
	}

	saPod(t, ns, "sdk", node, "", "app", "sleep", "infinity")
	pns, err := sb.PodNetNS(running(t, ns, "sdk"))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: azcore.ClientOptions{
		Transport: &http.Client{Transport: &http.Transport{DialContext: netns.Dialer(pns), DisableKeepAlives: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cred.GetToken(ctxFor(t), policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
	if err != nil {
		t.Fatalf("ManagedIdentityCredential in pod sdk: %v", err)
	}
	c, err := sb.Emulator.VerifyToken(tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(c["appid"]) != info.ClientID || !strings.EqualFold(fmt.Sprint(c["xms_mirid"]), info.ID) ||
		strings.TrimSuffix(fmt.Sprint(c["aud"]), "/") != "https://vault.azure.net" {
		t.Errorf("ManagedIdentityCredential token for %v / %v, aud %v; want %s / %s, Key Vault", c["appid"], c["xms_mirid"], c["aud"], info.ClientID, info.ID)
	}
	if n := exchanges(info, ns, "app"); n == 0 {
		t.Errorf("no Azure AD exchange of %s/app's token happened", ns)
	}
	micDone(t, ns, "sdk")
	onNoVM(t, info)
}

// Issue 15: a pod with the binding's label but another ServiceAccount passes NMI's binding check
// and is refused by Azure AD, which knows no credential for its ServiceAccount: 403
// federated_credential_missing after the propagation window... or 503 within it. Either way, no
// token.
func TestFederatedOtherServiceAccountGetsNoToken(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[1].Name
	info := fedIdentity(t, ns, "fed")
	fic(t, info, ns, "app")
	binding(t, ns, "by-label", "fed", "fed-label")

	saPod(t, ns, "right", node, "fed-label", "app", "sh", "-c", "az login --identity && sleep infinity")
	if r := firstToken(t, ns, "right"); !strings.EqualFold(r.AppID, info.ClientID) {
		t.Fatalf("pod right got %s, want %s", r.Summary(), info.ClientID)
	}
	saPod(t, ns, "intruder", node, "fed-label", "intruder", "curl", "-s", "-H", "Metadata: true", tokenURL(""))
	r := httpResult(t, ns, "intruder")
	if r.Status == http.StatusOK || !(r.Status == http.StatusForbidden && strings.Contains(r.Error, "federated_credential_missing") ||
		r.Status == http.StatusServiceUnavailable && strings.Contains(r.Error, "federated_credential_propagating")) {
		t.Errorf("pod of another ServiceAccount with the label: got %s (%s), want 403 federated_credential_missing (or 503 propagating)", r.Summary(), r.Error)
	}
	if n := exchanges(info, ns, "intruder"); n != 0 {
		t.Errorf("Azure AD exchanged %d tokens of the intruder's ServiceAccount", n)
	}
	micDone(t, ns, "right")
	onNoVM(t, info)
}

// Issue 15: the node's real IMDS holds no federated identity, so what bypasses NMI gets
// "Identity not found": a hostNetwork pod (its traffic is not redirected) and any direct call to
// the node's IMDS, as a pod would make while NMI is stopped and its redirect gone.
func TestFederatedIdentityIsNotOnTheNodesIMDS(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	n := sb.Nodes[0]
	info := fedIdentity(t, ns, "fed")
	fic(t, info, ns, "default")
	binding(t, ns, "by-label", "fed", "fed-host")
	pod(t, ns, "host", podOpts{Selector: "fed-host", Node: n.Name, Host: true}, "curl", "-s", "-H", "Metadata: true", tokenURL("&client_id="+info.ClientID))
	if r := httpResult(t, ns, "host"); r.Status == http.StatusOK {
		t.Errorf("hostNetwork pod got a token of the federated identity: %s", r.Summary())
	}

	h, err := sb.Emulator.IMDSHandler(n.HostKey)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id="+info.ClientID, nil)
	req.Header.Set("Metadata", "true")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "Identity not found") {
		t.Errorf("the node's IMDS for the federated identity: %d %s, want 400 Identity not found", rec.Code, rec.Body)
	}
}

// Issue 15: a credential created after the pod started: NMI answers 503 (propagating) until Azure
// AD matches it, then the pod gets its token, without restarting.
func TestFederatedCredentialCreatedAfterThePod(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := fedIdentity(t, ns, "late")
	saBinding(t, ns, "late", "late", "", "app")
	ask := "curl -s -H 'Metadata: true' '" + tokenURL("") + "'"
	saPod(t, ns, "app", sb.Nodes[2].Name, "", "app", "sh", "-c", strings.Repeat(ask+" ; sleep 0.5 ; ", 240)+"sleep infinity")
	first := result(t, ns, "app", "app", func(r probeclient.Result) bool { return r.Kind == "http" })
	if first.Status != http.StatusServiceUnavailable || !strings.Contains(first.Error, "federated_credential_propagating") {
		t.Fatalf("before the credential exists: %s (%s), want 503 federated_credential_propagating", first.Summary(), first.Error)
	}
	fic(t, info, ns, "app")
	result(t, ns, "app", "app", func(r probeclient.Result) bool { return r.Kind == "http" && r.Status == http.StatusOK })
	micDone(t, ns, "app")
	onNoVM(t, info)
}

// Issue 15: deleting the pod drops its cached tokens: a new pod of the same ServiceAccount on the
// same node makes a new Azure AD exchange instead of being served the old pod's.
func TestFederatedPodDeleteDropsCachedTokens(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[2].Name
	info := fedIdentity(t, ns, "fed")
	fic(t, info, ns, "app")
	saBinding(t, ns, "fed", "fed", "", "app")
	saPod(t, ns, "one", node, "", "app", "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, ns, "one")
	before := exchanges(info, ns, "app")
	deletePod(t, ns, "one")
	saPod(t, ns, "two", node, "", "app", "az", "login", "--identity")
	firstToken(t, ns, "two")
	if n := exchanges(info, ns, "app") - before; n < 1 {
		t.Errorf("the second pod was served without a new exchange (%d): the deleted pod's tokens stayed cached", n)
	}
}

// The sandbox's federated demo objects (what `make sandbox` applies in default) work as they are
// in any namespace once a credential names that namespace's ServiceAccount: the demo pod gets the
// demo identity's token, and the identity stays on no VM.
func TestFederatedDemoObjects(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	objs, err := sb.FederatedDemoObjects(ns)
	if err != nil {
		t.Fatal(err)
	}
	info, err := sb.Emulator.Identity(sandbox.FederatedIdentity)
	if err != nil {
		t.Fatal(err)
	}
	fic(t, info, ns, sandbox.FederatedServiceAccount)
	for _, o := range objs {
		if err := crc(t).Create(ctxFor(t), o); err != nil {
			t.Fatalf("applying the federated demo's %T %s: %v", o, o.GetName(), err)
		}
	}
	var got probeclient.Result
	waitFor(t, "a token for the federated demo pod in "+ns, func(context.Context) (bool, error) {
		all, _ := sb.Results()
		for _, r := range all {
			if r.Namespace == ns && strings.HasPrefix(r.Pod, sandbox.FederatedDemoName+"-") && r.Result.Kind == "token" {
				got = r.Result
				return r.Result.OK, nil
			}
		}
		return false, nil
	})
	if !strings.EqualFold(got.AppID, info.ClientID) || !strings.EqualFold(got.MIRID, info.ID) {
		t.Errorf("federated demo pod got %s, want %s (%s)", got.Summary(), info.ClientID, info.ID)
	}
	onNoVM(t, info)
}

// Issue 15: a broker identity's token comes from the exchange of NMI's own ServiceAccount token
// (one credential for the cluster, naming NMI), and podidentity's bindings alone decide which
// pods get it: a bound pod does, an unbound pod of the same namespace does not.
func TestFederatedBrokerSubject(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[1].Name
	info := azureIdentity(t, "broker")
	id, err := sb.FederatedIdentityObject(ns, "broker", info.Name)
	if err != nil {
		t.Fatal(err)
	}
	id.Spec.Federation.Subject = aadv1.FederationSubjectBroker
	if err := crc(t).Create(ctxFor(t), id); err != nil {
		t.Fatal(err)
	}
	fic(t, info, sandbox.MICNamespace, sandbox.NMIServiceAccount)
	saBinding(t, ns, "broker", "broker", "", "app")

	saPod(t, ns, "app", node, "", "app", "az", "login", "--identity")
	if r := firstToken(t, ns, "app"); !strings.EqualFold(r.AppID, info.ClientID) || !strings.EqualFold(r.MIRID, info.ID) {
		t.Fatalf("bound pod got %s, want the broker identity %s", r.Summary(), info.ClientID)
	}
	if n := exchanges(info, sandbox.MICNamespace, sandbox.NMIServiceAccount); n == 0 {
		t.Errorf("no exchange of NMI's own ServiceAccount token for the broker identity")
	}
	if n := exchanges(info, ns, "app"); n != 0 {
		t.Errorf("%d exchanges of the pod's own ServiceAccount token for a broker identity", n)
	}
	saPod(t, ns, "unbound", node, "", "other", "curl", "-s", "-H", "Metadata: true", tokenURL("&client_id="+info.ClientID))
	if r := httpResult(t, ns, "unbound"); r.Status != http.StatusForbidden {
		t.Errorf("unbound pod asking for the broker identity: got %s (%s), want 403", r.Summary(), r.Error)
	}
	onNoVM(t, info)
}
