package nmi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"software.sslmate.com/src/go-pkcs12"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// countingTransport sends the SDK's IMDS calls to NMI from the pod's IP and counts answers.
type countingTransport struct {
	hc       *http.Client
	requests atomic.Int32
	first503 chan struct{}
	seen503  atomic.Bool
}

func (h *harness) sdkTransport(podIP string) *countingTransport {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}}
	nmiAddr := h.addr
	ct := &countingTransport{first503: make(chan struct{})}
	ct.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != emulator.IMDSHost {
			return nil, errors.New("test transport only reaches IMDS (mapped to NMI): refusing " + addr)
		}
		return d.DialContext(ctx, network, nmiAddr)
	}}}
	return ct
}

func (c *countingTransport) Do(r *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	resp, err := c.hc.Do(r)
	if err == nil && resp.StatusCode == http.StatusServiceUnavailable && c.seen503.CompareAndSwap(false, true) {
		close(c.first503)
	}
	return resp, err
}

func managedCredential(t *testing.T, tr *countingTransport, id azidentity.ManagedIDKind) *azidentity.ManagedIdentityCredential {
	t.Helper()
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ID: id,
		ClientOptions: azcore.ClientOptions{Transport: tr,
			Retry: policy.RetryOptions{MaxRetries: 8, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 2 * time.Second}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

var armScope = policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}}

// The official SDK through NMI: success by client ID and by resource ID; a fast failure (one
// request, no retries) for an identity the pod is not bound to; and retries through 503 +
// Retry-After until the identity is assigned.
func TestManagedIdentityCredentialThroughNMI(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"sdk-a", "sdk-b", "sdk-other"}})
	a, b := h.identity("sdk-a"), h.identity("sdk-b")
	other := h.identity("sdk-other")
	h.binding("sdk-a", "app")
	h.binding("sdk-b", "app")
	pod := h.pod("app", "app", nil)
	h.assign(pod, a, aadv1.AssignedIDAssigned)
	h.assign(pod, b, aadv1.AssignedIDAssigned)

	tr := h.sdkTransport(pod.Status.PodIP)
	tok, err := managedCredential(t, tr, azidentity.ClientID(a.Spec.ClientID)).GetToken(testenv.Context(t), armScope)
	if err != nil {
		t.Fatalf("GetToken by client ID: %v", err)
	}
	if c, err := h.emu.VerifyToken(tok.Token); err != nil || c["appid"] != a.Spec.ClientID {
		t.Errorf("token for %v (err %v), want %s", c["appid"], err, a.Spec.ClientID)
	}
	tok, err = managedCredential(t, tr, azidentity.ResourceID(b.Spec.ResourceID)).GetToken(testenv.Context(t), armScope)
	if err != nil {
		t.Fatalf("GetToken by resource ID: %v", err)
	}
	if c, _ := h.emu.VerifyToken(tok.Token); c["appid"] != b.Spec.ClientID {
		t.Errorf("token for %v, want %s", c["appid"], b.Spec.ClientID)
	}

	fast := h.sdkTransport(pod.Status.PodIP)
	_, err = managedCredential(t, fast, azidentity.ClientID(other.Spec.ClientID)).GetToken(testenv.Context(t), armScope)
	if err == nil {
		t.Fatal("GetToken for an identity the pod is not bound to succeeded")
	}
	if n := fast.requests.Load(); n != 1 {
		t.Errorf("SDK sent %d requests for a refused identity, want 1 (403 must not be retried)", n)
	}

	// Retry-After mode: the SDK retries 503s until MIC assigns the identity.
	h2 := newHarness(t, harnessOpts{identities: []string{"sdk-late"}, cfg: func(c *Config) { c.SetRetryAfterHeader = true }})
	late := h2.identity("sdk-late")
	h2.binding("sdk-late", "late")
	pod2 := h2.pod("late", "late", nil)
	aai := h2.assign(pod2, late, aadv1.AssignedIDCreated)
	slow := h2.sdkTransport(pod2.Status.PodIP)
	done := make(chan error, 1)
	go func() {
		_, err := managedCredential(t, slow, azidentity.ClientID(late.Spec.ClientID)).GetToken(testenv.Context(t), armScope)
		done <- err
	}()
	select {
	case <-slow.first503:
	case err := <-done:
		t.Fatalf("GetToken ended before any 503: %v", err)
	}
	h2.setState(aai, late, aadv1.AssignedIDAssigned)
	if err := <-done; err != nil {
		t.Fatalf("GetToken after assignment: %v", err)
	}
	if n := slow.requests.Load(); n < 2 {
		t.Errorf("SDK sent %d requests, want a retry after the 503", n)
	}
}

const spAppID = "3b2a1c4d-0000-4000-8000-00000000a001"
const spCertAppID = "3b2a1c4d-0000-4000-8000-00000000a002"
const auxTenant = "5c0ffee0-0000-4000-8000-0000000000a1"

func selfSigned(t *testing.T) (certPEM []byte, pfx []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nmi-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pfx, err = pkcs12.Modern.Encode(key, cert, nil, "pfx-pass")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pfx
}

// Service principals: client secret with auxiliary tenants (a JSON array, primary first), and a
// PKCS#12 certificate; the Secret is read from a watch, and a rotated Secret is used at once.
func TestServicePrincipals(t *testing.T) {
	certPEM, pfx := selfSigned(t)
	h := newHarness(t, harnessOpts{tenants: []string{auxTenant}, principals: []emulator.PrincipalConfig{
		{AppID: spAppID, Secrets: []string{"s3cret"}},
		{AppID: spCertAppID, Certificates: []string{string(certPEM)}},
	}})
	tenant := h.emu.Config().TenantID
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}}
	env.Create(t, secret)
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "cert"},
		Data: map[string][]byte{"certificate": pfx, "password": []byte("pfx-pass")}})
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: tenant, ClientPassword: corev1.SecretReference{Name: "sp"}}}
	spc := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "spc"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipalCertificate, ClientID: spCertAppID, TenantID: tenant,
		ClientPassword: corev1.SecretReference{Name: "cert", Namespace: h.ns}}}
	env.Create(t, sp)
	env.Create(t, spc)
	h.binding("sp", "sp")
	h.binding("spc", "sp")
	pod := h.pod("app", "sp", nil)
	h.assign(pod, sp, aadv1.AssignedIDAssigned)
	h.assign(pod, spc, aadv1.AssignedIDAssigned)

	a := h.token(pod, "client_id", spAppID)
	wantStatus(t, a, 200)
	if c := h.claims(a); c["appid"] != spAppID || c["tid"] != tenant {
		t.Errorf("secret token for %v in %v, want %s in %s", c["appid"], c["tid"], spAppID, tenant)
	}
	a = h.token(pod, "client_id", spCertAppID)
	wantStatus(t, a, 200)
	if c := h.claims(a); c["appid"] != spCertAppID {
		t.Errorf("certificate token for %v, want %s", c["appid"], spCertAppID)
	}
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Status: 200}); n != 2 {
		t.Errorf("AAD issued %d tokens, want 2", n)
	}
	wantStatus(t, h.token(pod, "client_id", spCertAppID), 200) // cached
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken}); n != 2 {
		t.Errorf("AAD saw %d token calls after a cached request, want 2", n)
	}

	// A wrong secret fails fast with 403 once the rotated Secret is seen.
	secret.Data["clientSecret"] = []byte("wrong")
	if err := env.Client.Update(testenv.Context(t), secret); err != nil {
		t.Fatal(err)
	}
	for {
		a = h.token(pod, "client_id", spAppID)
		if a.status != 200 {
			break
		}
		waitBriefly() // the Secret watch has not delivered the update yet
	}
	wantStatus(t, a, 403)
}

// servicePrincipalPod creates a Secret "sp" with spAppID's secret, a type-1 identity "sp" using it,
// a binding and a pod "app" bound to it.
func (h *harness) servicePrincipalPod() (*aadv1.AzureIdentity, *corev1.Pod) {
	t := h.t
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: h.emu.Config().TenantID, ClientPassword: corev1.SecretReference{Name: "sp"}}}
	env.Create(t, sp)
	h.binding("sp", "sp")
	return sp, h.pod("app", "sp", nil)
}

// A service principal is prefetched on Assigned too: its Secret is read, Azure AD asked once, and
// the pod's first request is a cache hit.
func TestServicePrincipalPrefetch(t *testing.T) {
	h := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}},
		cfg: func(c *Config) { c.PrefetchResources = []string{armResource} }})
	sp, pod := h.servicePrincipalPod()
	aadCalls := func() int64 {
		return h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken})
	}
	h.assign(pod, sp, aadv1.AssignedIDAssigned)
	deadline := time.Now().Add(30 * time.Second)
	for aadCalls() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch reached Azure AD after the assignment")
		}
		waitBriefly()
	}
	wantStatus(t, h.token(pod), 200)
	if n := aadCalls(); n != 1 {
		t.Errorf("Azure AD token calls %d, want 1 (the prefetch; the request was a cache hit)", n)
	}
}

// A Secret is watched from the first token of an identity that references it until no identity
// does: deleting the identity stops the watch (NMI watches no Secret it does not need).
func TestSecretWatchStopsWhenNoIdentityReferencesTheSecret(t *testing.T) {
	h := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}}})
	sp, pod := h.servicePrincipalPod()
	h.assign(pod, sp, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(pod), 200)
	if got := h.secrets.Watching(); !slices.Equal(got, []string{h.ns + "/sp"}) {
		t.Fatalf("watched Secrets after a token: %v, want [%s/sp]", got, h.ns)
	}
	if err := env.Client.Delete(testenv.Context(t), sp); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(h.secrets.Watching()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Secret watches still running after the identity was deleted: %v", h.secrets.Watching())
		}
		waitBriefly()
	}
}

// auxiliaryTenantIDs: NMI asks Azure AD in each tenant. Here the principal is registered in its
// home tenant only, so the auxiliary request is refused there; what is checked is that it is made
// (in the auxiliary tenant, after the primary) and that the refusal is a 403 naming the tenant.
// Success is TestAuxiliaryTenantsSuccess.
func TestAuxiliaryTenantsRequested(t *testing.T) {
	h := newHarness(t, harnessOpts{tenants: []string{auxTenant}, principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}}})
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	env.Create(t, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: h.emu.Config().TenantID, AuxiliaryTenantIDs: []string{auxTenant},
		ClientPassword: corev1.SecretReference{Name: "sp"}}})
	h.binding("sp", "sp")
	pod := h.pod("app", "sp", nil)
	var sp aadv1.AzureIdentity
	if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: h.ns, Name: "sp"}, &sp); err != nil {
		t.Fatal(err)
	}
	h.assign(pod, &sp, aadv1.AssignedIDAssigned)
	a := h.token(pod)
	wantStatus(t, a, 403)
	if !strings.Contains(string(a.body), auxTenant) {
		t.Errorf("refusal should name the auxiliary tenant: %s", a.body)
	}
	home := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Resource: h.emu.Config().TenantID, Status: 200})
	aux := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Resource: auxTenant})
	if home != 1 || aux != 1 {
		t.Errorf("AAD token calls: home tenant %d (200), auxiliary %d; want 1 and 1", home, aux)
	}
}

// A custom cloud: with no adEndpoint on the identity and no authority or CA configured in code,
// NMI reaches the emulator's Azure AD only through the upstream AZURE_ENVIRONMENT_FILEPATH file
// (read by MIC's parser): its activeDirectoryEndpoint and its caBundle. An identity's adEndpoint
// still wins over the file.
func TestServicePrincipalCustomCloud(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}},
		withEmu: func(c *Config, emu *emulator.Emulator) {
			caFile, envFile := dir+"/ca.pem", dir+"/cloud.json"
			if err := emu.WriteCA(caFile); err != nil {
				t.Fatal(err)
			}
			writeFile(t, envFile, `{"name":"AzureStackCloud","resourceManagerEndpoint":"`+emu.ARMURL()+`/","activeDirectoryEndpoint":"`+
				emu.AADURL()+`/","caBundle":"`+caFile+`"}`)
			// Nothing from code: only what the file says. The operator allows the bad identity's
			// host, so that it fails by reaching nothing rather than by policy.
			c.AuthorityHost, c.AADClientOptions = "", azcore.ClientOptions{}
			c.AllowedADEndpoints = []string{"https://127.0.0.1:1"}
			if err := c.LoadCloud(func(k string) string {
				if k == "AZURE_ENVIRONMENT_FILEPATH" {
					return envFile
				}
				return ""
			}); err != nil {
				t.Fatalf("LoadCloud: %v", err)
			}
			if c.AuthorityHost != emu.AADURL()+"/" || c.AADClientOptions.Transport == nil {
				t.Fatalf("LoadCloud took authority %q, transport %v; want %s/ and a transport trusting caBundle", c.AuthorityHost, c.AADClientOptions.Transport, emu.AADURL())
			}
		}})
	tenant := h.emu.Config().TenantID
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: tenant, ClientPassword: corev1.SecretReference{Name: "sp"}}}
	// The same principal with an adEndpoint where nothing listens: that identity must fail,
	// which shows adEndpoint is used over the file.
	bad := sp.DeepCopy()
	bad.Name, bad.Spec.ADEndpoint = "sp-bad", "https://127.0.0.1:1/"
	env.Create(t, sp)
	env.Create(t, bad)
	h.binding("sp", "sp")
	h.binding("sp-bad", "bad")
	pod, badPod := h.pod("app", "sp", nil), h.pod("bad", "bad", nil)
	h.assign(pod, sp, aadv1.AssignedIDAssigned)
	h.assign(badPod, bad, aadv1.AssignedIDAssigned)

	a := h.token(pod)
	wantStatus(t, a, 200)
	if c := h.claims(a); c["appid"] != spAppID || c["tid"] != tenant {
		t.Errorf("token for %v in %v, want %s in %s", c["appid"], c["tid"], spAppID, tenant)
	}
	wantStatus(t, h.token(badPod), 503)
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken}); n != 1 {
		t.Errorf("emulator AAD saw %d token calls, want 1 (the identity with adEndpoint must not reach it)", n)
	}
}

// A custom-cloud file that MIC's parser refuses stops NMI with an error naming the variable.
func TestLoadCloudErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/bad.json", `{"name":"x","activeDirectoryEndpoint":"https://login.example/"}`)
	for name, file := range map[string]string{"missing": dir + "/none.json", "incomplete": dir + "/bad.json"} {
		var c Config
		err := c.LoadCloud(func(k string) string {
			if k == "AZURE_ENVIRONMENT_FILEPATH" {
				return file
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), "AZURE_ENVIRONMENT_FILEPATH") {
			t.Errorf("%s file: want an error naming AZURE_ENVIRONMENT_FILEPATH, got %v", name, err)
		}
	}
	var c Config
	if err := c.LoadCloud(func(string) string { return "" }); err != nil || c.AuthorityHost != "" || c.AADClientOptions.Transport != nil {
		t.Errorf("without the variables LoadCloud must keep the defaults: %v %+v", err, c)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// auxiliaryTenantIDs with a principal registered in both tenants: the answer is the upstream
// JSON array, one IMDS-shaped token per tenant, primary first, each issued by that tenant.
func TestAuxiliaryTenantsSuccess(t *testing.T) {
	h := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}, Tenants: []string{auxTenant}}}})
	home := h.emu.Config().TenantID
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: home, AuxiliaryTenantIDs: []string{auxTenant},
		ClientPassword: corev1.SecretReference{Name: "sp"}}}
	env.Create(t, sp)
	h.binding("sp", "sp")
	pod := h.pod("app", "sp", nil)
	h.assign(pod, sp, aadv1.AssignedIDAssigned)

	for round := 0; round < 2; round++ { // fetched, then from the cache: same shape
		a := h.token(pod)
		wantStatus(t, a, 200)
		var toks []map[string]any
		if err := json.Unmarshal(a.body, &toks); err != nil {
			t.Fatalf("answer is not a JSON array of tokens: %v: %s", err, a.body)
		}
		if len(toks) != 2 {
			t.Fatalf("%d tokens, want 2 (primary, auxiliary): %s", len(toks), a.body)
		}
		for i, want := range []string{home, auxTenant} {
			if _, ok := toks[i]["expires_on"].(string); !ok || toks[i]["client_id"] != spAppID || toks[i]["token_type"] != "Bearer" {
				t.Errorf("token %d is not IMDS-shaped (string numbers, client_id): %v", i, toks[i])
			}
			c, err := h.emu.VerifyToken(fmt.Sprint(toks[i]["access_token"]))
			if err != nil {
				t.Fatalf("token %d does not verify: %v", i, err)
			}
			if c["tid"] != want || c["appid"] != spAppID {
				t.Errorf("token %d: tid %v appid %v, want tid %s appid %s", i, c["tid"], c["appid"], want, spAppID)
			}
		}
	}
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Resource: auxTenant, Status: 200}); n != 1 {
		t.Errorf("auxiliary tenant issued %d tokens, want 1 (the second answer is cached)", n)
	}
}
