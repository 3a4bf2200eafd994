package nmi

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Issue 15: federated identities are served from bindings alone (no AzureAssignedIdentity, no
// identity on the VM), with a ServiceAccount token bound to the pod as Azure AD's assertion.

// newFedHarness is a node whose emulated Azure AD trusts the test apiserver's token issuer.
func newFedHarness(t *testing.T, o harnessOpts) (*harness, testenv.Issuer) {
	t.Helper()
	iss, err := env.PublishIssuer(testenv.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, o)
	if err := h.emu.TrustIssuerCA(iss.CAPEM); err != nil {
		t.Fatal(err)
	}
	return h, iss
}

// fedIdentity creates a federated AzureIdentity (type 0) for an emulator identity.
func (h *harness) fedIdentity(name string, f aadv1.Federation) *aadv1.AzureIdentity {
	h.t.Helper()
	info, err := h.emu.Identity(name)
	if err != nil {
		h.t.Fatal(err)
	}
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: info.ID, ClientID: info.ClientID,
			TenantID: info.TenantID, Federation: &f}}
	env.Create(h.t, id)
	return id
}

func saSubject(ns, sa string) string { return "system:serviceaccount:" + ns + ":" + sa }

// fic creates a federated credential on an emulator identity for ServiceAccount ns/sa.
func (h *harness) fic(identity string, iss testenv.Issuer, ns, sa string) {
	h.t.Helper()
	if err := h.emu.AddFederatedCredential(identity, emulator.FederatedCredentialConfig{Name: ns + "-" + sa, Issuer: iss.URL, Subject: saSubject(ns, sa)}); err != nil {
		h.t.Fatal(err)
	}
}

// exchanges counts Azure AD's successful federated exchanges for a client and subject.
func (h *harness) exchanges(clientID, subject string) int64 {
	return h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Identity: clientID, Subject: subject, Status: 200})
}

// waitBound waits until NMI's store binds pod to a federated identity (informers of different
// kinds sync independently, and federated requests do not wait for an assignment).
func (h *harness) waitBound(pod *corev1.Pod) {
	h.t.Helper()
	h.waitStore("pod "+pod.Name+" bound to a federated identity", func(s *Store) bool {
		p := s.podsByKey[pod.Namespace+"/"+pod.Name]
		if p == nil || p.UID != pod.UID {
			return false
		}
		bound, _ := s.grantsLocked(p, h.srv.rules())
		for _, g := range bound {
			if g.id.Spec.IsFederated() {
				return true
			}
		}
		return false
	})
}

// saTokenClaims returns the claims of the ServiceAccount token NMI holds for a pod.
func (h *harness) saTokenClaims(uid types.UID) map[string]any {
	h.t.Helper()
	t := h.srv.fed.tokens
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, tok := range t.m {
		if k.pod != uid {
			continue
		}
		parts := strings.Split(tok.token, ".")
		b, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			h.t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(b, &c); err != nil {
			h.t.Fatal(err)
		}
		return c
	}
	h.t.Fatalf("NMI holds no ServiceAccount token for pod %s", uid)
	return nil
}

func TestFederatedTokenForUnchangedClients(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}})
	id := h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	h.binding("fed", "fed")
	pod := h.saPod(h.ns, "app", "fed", "app")
	h.waitBound(pod)

	// A raw IMDS GET, and no AzureAssignedIdentity exists: nothing waits for MIC.
	a := h.token(pod)
	wantStatus(t, a, http.StatusOK)
	if got := a.json(t)["client_id"]; got != id.Spec.ClientID {
		t.Errorf("client_id %v, want %s", got, id.Spec.ClientID)
	}
	c := h.claims(a)
	if c["appid"] != id.Spec.ClientID || !strings.EqualFold(c["xms_mirid"].(string), id.Spec.ResourceID) {
		t.Errorf("token claims appid=%v xms_mirid=%v, want %s and %s", c["appid"], c["xms_mirid"], id.Spec.ClientID, id.Spec.ResourceID)
	}
	if n := h.imdsTokenCalls(id.Spec.ClientID); n != 0 {
		t.Errorf("IMDS token calls %d: a federated identity must never come from the node's IMDS", n)
	}
	if n := h.exchanges(id.Spec.ClientID, saSubject(h.ns, "app")); n != 1 {
		t.Errorf("federated exchanges for %s: %d, want 1", saSubject(h.ns, "app"), n)
	}

	// The assertion was minted for the pod's ServiceAccount and bound to this very pod.
	sc := h.saTokenClaims(pod.UID)
	k8s, _ := sc["kubernetes.io"].(map[string]any)
	bound, _ := k8s["pod"].(map[string]any)
	if sc["sub"] != saSubject(h.ns, "app") || bound["uid"] != string(pod.UID) || bound["name"] != pod.Name {
		t.Errorf("ServiceAccount token sub=%v pod=%v, want %s bound to pod %s (%s)", sc["sub"], bound, saSubject(h.ns, "app"), pod.Name, pod.UID)
	}
	if aud, _ := sc["aud"].([]any); len(aud) != 1 || aud[0] != aadv1.DefaultFederationAudience {
		t.Errorf("ServiceAccount token aud=%v, want [%s]", sc["aud"], aadv1.DefaultFederationAudience)
	}

	// The official SDK's ManagedIdentityCredential, unchanged, selecting the identity by client ID.
	cred := managedCredential(t, h.sdkTransport(pod.Status.PodIP), azidentity.ClientID(id.Spec.ClientID))
	tok, err := cred.GetToken(testenv.Context(t), armScope)
	if err != nil {
		t.Fatalf("SDK: %v", err)
	}
	sdkClaims, err := h.emu.VerifyToken(tok.Token)
	if err != nil || sdkClaims["appid"] != id.Spec.ClientID {
		t.Fatalf("SDK token claims %v (%v), want appid %s", sdkClaims, err, id.Spec.ClientID)
	}
}

// A pod of another ServiceAccount with the same label is bound by NMI, but Azure AD refuses it:
// 403 naming issuer, subject, audience and the az command, and a Warning on the binding.
func TestFederatedOtherServiceAccountRefusedByAzureAD(t *testing.T) {
	ev := &events{}
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}, cfg: func(c *Config) { c.Events = ev }})
	id := h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	b := h.binding("fed", "fed")
	app := h.saPod(h.ns, "app", "fed", "app")
	intruder := h.saPod(h.ns, "intruder", "fed", "intruder")
	h.waitBound(app)
	h.waitBound(intruder)
	// app's token is cached: the intruder must not get it (the ServiceAccount is in the key).
	wantStatus(t, h.token(app), http.StatusOK)

	a := h.token(intruder)
	wantStatus(t, a, http.StatusForbidden)
	body := string(a.body)
	for _, want := range []string{"federated_credential_missing", iss.URL, saSubject(h.ns, "intruder"), aadv1.DefaultFederationAudience,
		"az identity federated-credential create", "--identity-name fed", "--subject " + saSubject(h.ns, "intruder"), id.Spec.ClientID} {
		if !strings.Contains(body, want) {
			t.Errorf("answer lacks %q: %s", want, body)
		}
	}
	if e := ev.find("FederatedCredentialMissing", b.Namespace+"/"+b.Name); e == "" {
		t.Errorf("no FederatedCredentialMissing event on binding %s/%s: %v", b.Namespace, b.Name, ev.list)
	}
	if n := h.exchanges(id.Spec.ClientID, saSubject(h.ns, "intruder")); n != 0 {
		t.Errorf("%d successful exchanges for the intruder, want 0", n)
	}
}

// A credential created after the pod: 503 + Retry-After within the propagation window, then a
// token once Azure AD sees it.
func TestFederatedCredentialCreatedAfterPod(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"},
		timing: emulator.Timing{FICPropagation: emulator.D(time.Second)},
		cfg:    func(c *Config) { c.FederationPropagationWindow = 5 * time.Minute }})
	id := h.fedIdentity("fed", aadv1.Federation{})
	h.binding("fed", "fed")
	pod := h.saPod(h.ns, "app", "fed", "app")
	h.waitBound(pod)

	a := h.token(pod)
	wantStatus(t, a, http.StatusServiceUnavailable)
	if a.header.Get("Retry-After") == "" || !strings.Contains(string(a.body), "federated_credential_propagating") {
		t.Fatalf("want 503 federated_credential_propagating with Retry-After, got %v %s", a.header, a.body)
	}
	h.fic("fed", iss, h.ns, "app")
	created := time.Now()
	// The emulator's Azure AD does not match the credential for a second yet.
	wantStatus(t, h.token(pod), http.StatusServiceUnavailable)
	for {
		a = h.token(pod)
		if a.status == http.StatusOK {
			break
		}
		if a.status != http.StatusServiceUnavailable || time.Since(created) > 20*time.Second {
			t.Fatalf("after creating the credential: %d %s", a.status, a.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if since := time.Since(created); since < time.Second {
		t.Errorf("token after %s, before the emulator's propagation of 1s ended", since)
	}
	if got := a.json(t)["client_id"]; got != id.Spec.ClientID {
		t.Errorf("client_id %v", got)
	}
}

// A bound pod that becomes Running is prefetched: the exchange happens before its first request,
// which is a cache hit.
func TestFederatedPrefetchWhenPodRuns(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}, cfg: func(c *Config) { c.PrefetchResources = []string{armResource} }})
	id := h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	sb := h.saBinding(h.ns, "fed", "fed", "", "app", 0)
	h.waitStore("binding", func(s *Store) bool {
		return s.bindings[sb.Namespace+"/"+sb.Name] != nil && s.identities[h.ns+"/fed"] != nil
	})
	pod := h.saPod(h.ns, "app", "", "app")
	for h.srv.cache.Len() == 0 {
		select {
		case <-testenv.Context(t).Done():
			t.Fatal("the prefetch never filled the cache")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if n := h.exchanges(id.Spec.ClientID, saSubject(h.ns, "app")); n != 1 {
		t.Fatalf("exchanges before the first request: %d, want 1 (the prefetch)", n)
	}
	hits, misses := testutil.ToFloat64(h.srv.metrics.cacheHits), testutil.ToFloat64(h.srv.metrics.cacheMisses)
	wantStatus(t, h.token(pod), http.StatusOK)
	if d := testutil.ToFloat64(h.srv.metrics.cacheHits) - hits; d != 1 {
		t.Errorf("cache hits +%v, want +1", d)
	}
	if d := testutil.ToFloat64(h.srv.metrics.cacheMisses) - misses; d != 0 {
		t.Errorf("cache misses +%v, want 0", d)
	}
	if n := h.exchanges(id.Spec.ClientID, ""); n != 1 {
		t.Errorf("exchanges %d, want still 1", n)
	}
}

// Deleting the pod drops its ServiceAccount tokens and, with no pod of that ServiceAccount left
// on the node, the Azure AD tokens Azure AD issued for it.
func TestFederatedPodDeleteDropsTokens(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}})
	h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	h.binding("fed", "fed")
	one := h.saPod(h.ns, "one", "fed", "app")
	two := h.saPod(h.ns, "two", "fed", "app")
	h.waitBound(one)
	h.waitBound(two)
	wantStatus(t, h.token(one), http.StatusOK)
	wantStatus(t, h.token(two), http.StatusOK)
	if h.srv.fed.tokens.count(one.UID) != 1 || h.srv.cache.Len() != 1 {
		t.Fatalf("ServiceAccount tokens of pod one %d, cache entries %d: want 1 and 1 (the pods share their ServiceAccount's token)", h.srv.fed.tokens.count(one.UID), h.srv.cache.Len())
	}
	del := func(p *corev1.Pod) {
		if err := env.Client.Delete(testenv.Context(t), p, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		h.waitStore("pod "+p.Name+" gone", func(s *Store) bool { return s.podsByKey[p.Namespace+"/"+p.Name] == nil })
	}
	del(one)
	if n := h.srv.fed.tokens.count(one.UID); n != 0 {
		t.Errorf("ServiceAccount tokens of the deleted pod: %d, want 0", n)
	}
	if n := h.srv.cache.Len(); n != 1 {
		t.Errorf("cache entries %d, want 1: pod two still runs as the ServiceAccount", n)
	}
	del(two)
	if n := h.srv.cache.Len(); n != 0 {
		t.Errorf("cache entries %d after the ServiceAccount's last pod left, want 0", n)
	}
}

// A federated AzureIdentity pairing one identity's client ID with another's resource ID gets
// Azure AD tokens of the client ID's identity: refused, as for IMDS tokens.
func TestFederatedTokenMustMatchIdentity(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed", "other"}})
	other, _ := h.emu.Identity("other")
	id := h.fedIdentity("fed", aadv1.Federation{})
	id.Spec.ResourceID = other.ID
	if err := env.Client.Update(testenv.Context(t), id); err != nil {
		t.Fatal(err)
	}
	h.fic("fed", iss, h.ns, "app")
	h.binding("fed", "fed")
	pod := h.saPod(h.ns, "app", "fed", "app")
	h.waitStore("edited identity", func(s *Store) bool {
		cur := s.identities[h.ns+"/fed"]
		return cur != nil && cur.Spec.ResourceID == other.ID
	})
	h.waitBound(pod)
	a := h.token(pod)
	if a.status != http.StatusForbidden || !strings.Contains(string(a.body), "identity_mismatch") || !strings.Contains(string(a.body), "Azure AD issued") {
		t.Fatalf("got %d %s, want 403 identity_mismatch", a.status, a.body)
	}
}

// Broker identities present NMI's own ServiceAccount token, bound to NMI's pod; without NMI's
// pod configured they are refused with what to set.
func TestFederatedBrokerSubject(t *testing.T) {
	nmiNS := env.Namespace(t)
	ctx := testenv.Context(t)
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: nmiNS, Name: "nmi"}}); err != nil {
		t.Fatal(err)
	}
	nmiPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: nmiNS, Name: "nmi-abcde"},
		Spec: corev1.PodSpec{NodeName: "elsewhere", ServiceAccountName: "nmi", Containers: []corev1.Container{{Name: "nmi", Image: "example.invalid/nmi"}}}}
	env.Create(t, nmiPod)
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"broker"}, cfg: func(c *Config) {
		c.Broker = Broker{Namespace: nmiNS, PodName: nmiPod.Name, PodUID: nmiPod.UID, ServiceAccount: "nmi"}
	}})
	id := h.fedIdentity("broker", aadv1.Federation{Subject: aadv1.FederationSubjectBroker})
	h.fic("broker", iss, nmiNS, "nmi") // one credential for the cluster: NMI's ServiceAccount
	h.binding("broker", "web")
	a1 := h.saPod(h.ns, "a1", "web", "app")
	a2 := h.saPod(h.ns, "a2", "web", "other")
	h.waitBound(a1)
	h.waitBound(a2)
	for _, p := range []*corev1.Pod{a1, a2} {
		a := h.token(p)
		wantStatus(t, a, http.StatusOK)
		if c := h.claims(a); c["appid"] != id.Spec.ClientID {
			t.Errorf("pod %s: appid %v", p.Name, c["appid"])
		}
	}
	if n := h.exchanges(id.Spec.ClientID, saSubject(nmiNS, "nmi")); n != 1 {
		t.Errorf("exchanges as NMI's ServiceAccount: %d, want 1 (both pods share the broker's token)", n)
	}
	sc := h.saTokenClaims(nmiPod.UID)
	bound, _ := sc["kubernetes.io"].(map[string]any)["pod"].(map[string]any)
	if sc["sub"] != saSubject(nmiNS, "nmi") || bound["uid"] != string(nmiPod.UID) {
		t.Errorf("broker token sub=%v pod=%v, want NMI's ServiceAccount bound to NMI's pod", sc["sub"], bound)
	}

	// The same identity on a node whose NMI does not know its own pod.
	h2, iss2 := newFedHarness(t, harnessOpts{identities: []string{"broker"}})
	h2.fedIdentity("broker", aadv1.Federation{Subject: aadv1.FederationSubjectBroker})
	h2.fic("broker", iss2, nmiNS, "nmi")
	h2.binding("broker", "web")
	p := h2.saPod(h2.ns, "a1", "web", "app")
	h2.waitBound(p)
	a := h2.token(p)
	if a.status != http.StatusForbidden || !strings.Contains(string(a.body), "POD_NAME") || !strings.Contains(string(a.body), "--service-account-name") {
		t.Fatalf("got %d %s, want 403 naming POD_NAME and --service-account-name", a.status, a.body)
	}
}

// When the apiserver refuses NMI's TokenRequest (no RBAC for serviceaccounts/token), the pod gets
// 403 naming the ServiceAccount and the permission.
func TestFederatedTokenRequestForbidden(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}, cfg: func(c *Config) {
		rc := rest.CopyConfig(env.Config)
		rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:nmi-without-rbac"}
		c.KubeClient = kubernetes.NewForConfigOrDie(rc)
	}})
	h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	h.binding("fed", "fed")
	pod := h.saPod(h.ns, "app", "fed", "app")
	h.waitBound(pod)
	a := h.token(pod)
	body := string(a.body)
	if a.status != http.StatusForbidden || !strings.Contains(body, "service_account_token_refused") ||
		!strings.Contains(body, h.ns+"/app") || !strings.Contains(body, "serviceaccounts/token") {
		t.Fatalf("got %d %s, want 403 naming ServiceAccount %s/app and serviceaccounts/token", a.status, body, h.ns)
	}
}

// With --honor-workload-identity-annotations, a pod no binding selects gets the federated
// identity its ServiceAccount's azure.workload.identity annotations name; without, nothing.
func TestFederatedWorkloadIdentityAnnotations(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"wi"}, cfg: func(c *Config) { c.HonorWorkloadIdentityAnnotations = true }})
	info, _ := h.emu.Identity("wi")
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "wi", Annotations: map[string]string{
		WorkloadIdentityClientIDAnnotation: info.ClientID, WorkloadIdentityTenantIDAnnotation: info.TenantID}}}
	env.Create(t, sa)
	h.fic("wi", iss, h.ns, "wi")
	pod := h.saPod(h.ns, "app", "", "wi")
	plain := h.saPod(h.ns, "plain", "", "plain")
	h.waitBound(pod)
	a := h.token(pod)
	wantStatus(t, a, http.StatusOK)
	if c := h.claims(a); c["appid"] != info.ClientID {
		t.Errorf("appid %v, want the annotation's %s", c["appid"], info.ClientID)
	}
	wantNotBound(t, h.token(plain), "a pod of an unannotated ServiceAccount")

	off, iss2 := newFedHarness(t, harnessOpts{identities: []string{"wi"}})
	sa2 := sa.DeepCopy()
	sa2.Namespace, sa2.ResourceVersion, sa2.UID = off.ns, "", ""
	env.Create(t, sa2)
	off.fic("wi", iss2, off.ns, "wi")
	p2 := off.saPod(off.ns, "app", "", "wi")
	off.waitStore("pod", func(s *Store) bool { return s.podsByKey[off.ns+"/app"] != nil })
	wantNotBound(t, off.token(p2), "annotations without --honor-workload-identity-annotations")
}

// Managed mode serves federated identities the same way (namespaced, no assignments watched).
func TestFederatedManagedMode(t *testing.T) {
	h, iss := newFedHarness(t, harnessOpts{identities: []string{"fed"}, cfg: func(c *Config) {
		c.OperationMode, c.ForceNamespaced = ModeManaged, true
	}})
	id := h.fedIdentity("fed", aadv1.Federation{})
	h.fic("fed", iss, h.ns, "app")
	h.binding("fed", "fed")
	pod := h.saPod(h.ns, "app", "fed", "app")
	h.waitBound(pod)
	a := h.token(pod, "client_id", id.Spec.ClientID)
	wantStatus(t, a, http.StatusOK)
	if c := h.claims(a); c["appid"] != id.Spec.ClientID {
		t.Errorf("appid %v", c["appid"])
	}
}
