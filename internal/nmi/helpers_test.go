package nmi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// ipSeq hands out loopback pod IPs (127.1.x.y), unique within the test binary.
var ipSeq atomic.Int32

func nextPodIP() string {
	n := ipSeq.Add(1)
	return fmt.Sprintf("127.1.%d.%d", n/250, n%250+2)
}

const armResource = "https://management.azure.com/"

// harness is one node: an emulated VM with its IMDS, NMI's real server on loopback, the shared
// control plane, and a fresh namespace.
type harness struct {
	t     testing.TB
	ns    string
	node  string
	vm    string
	emu   *emulator.Emulator
	agent *Agent
	srv   *Server
	store *Store
	// secrets watches the Secrets of service-principal identities.
	secrets *SecretWatcher
	addr    string // NMI listener host:port
	ctx     context.Context
	// api is the cuttable proxy between NMI and the API server (harnessOpts.apiProxy).
	api *apiProxy
}

type harnessOpts struct {
	cfg func(*Config)
	// withEmu adjusts the config once the emulator runs (its URLs and CA are known).
	withEmu func(*Config, *emulator.Emulator)
	// wrapIMDS, when set, wraps the listener the emulator's IMDS serves on (e.g. to count the
	// connections NMI opens to it).
	wrapIMDS   func(net.Listener) net.Listener
	identities []string // user-assigned identities to create in the emulator
	principals []emulator.PrincipalConfig
	timing     emulator.Timing
	tenants    []string
	// apiProxy puts a cuttable proxy between NMI (watches, confirmations, TokenRequests) and the
	// API server; the test's own client still talks to it directly.
	apiProxy bool
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	ns := env.Namespace(t)
	h := &harness{t: t, ns: ns, node: "node-" + ns, vm: "vm-" + ns}
	ecfg := emulator.Config{
		VirtualMachines:   []emulator.VMConfig{{Name: h.vm}},
		Timing:            o.timing,
		ExtraTenants:      o.tenants,
		ServicePrincipals: o.principals,
	}
	for _, n := range o.identities {
		ecfg.UserAssignedIdentities = append(ecfg.UserAssignedIdentities, emulator.IdentityConfig{Name: n})
	}
	emu, err := emulator.New(ecfg)
	if err != nil {
		t.Fatalf("emulator: %v", err)
	}
	if err := emu.Start(); err != nil {
		t.Fatalf("starting emulator: %v", err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	h.emu = emu
	var imdsURL string
	if o.wrapIMDS != nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = emu.ServeIMDS(h.vm, o.wrapIMDS(ln)) }() // ends when the emulator closes
		imdsURL = "http://" + ln.Addr().String()
	} else if imdsURL, err = emu.StartIMDS(h.vm, ""); err != nil {
		t.Fatalf("starting IMDS: %v", err)
	}
	u, _ := url.Parse(imdsURL)
	port, _ := strconv.Atoi(u.Port())
	restCfg := env.Config
	if o.apiProxy {
		h.api, restCfg = newAPIProxy(t, env.Config)
	}
	cfg := Config{
		NodeName: h.node, MetadataIP: u.Hostname(), MetadataPort: port, MetadataHeaderRequired: true,
		RetryAttemptsForCreated: 4, RetryAttemptsForAssigned: 2, FindIdentityRetryInterval: 100 * time.Millisecond,
		PodWaitTimeout: 100 * time.Millisecond, RetryAfter: time.Second,
		AuthorityHost: emu.AADURL(), AADClientOptions: emu.ClientOptions(),
		KubeClient: kubernetes.NewForConfigOrDie(restCfg),
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	if o.withEmu != nil {
		o.withEmu(&cfg, emu)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.ctx = ctx
	log := logr.Discard()
	if tt, ok := t.(*testing.T); ok {
		log = testr.NewWithOptions(tt, testr.Options{Verbosity: 1})
		ctrllog.SetLogger(log)
	} else {
		ctrllog.SetLogger(log) // benchmarks: discard, and no "SetLogger was never called" dump
	}
	cfg.RestConfig, cfg.ListenAddress, cfg.Log = restCfg, "127.0.0.1:0", log
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("nmi.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("nmi.Run: %v", err)
	}
	// Stop this NMI before the emulator (cleanups run last-registered first).
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("nmi.Run: %v", err)
		}
	})
	h.agent, h.store, h.secrets, h.srv, h.addr = a, a.Store(), a.Secrets(), a.Server(), a.Addr().String()
	env.CreateNode(t, h.node, testenv.VMProviderID(emu.Config().SubscriptionID, emu.Config().ResourceGroup, h.vm))
	return h
}

// identity creates an AzureIdentity for an emulator identity and returns it.
func (h *harness) identity(name string) *aadv1.AzureIdentity {
	h.t.Helper()
	info, err := h.emu.Identity(name)
	if err != nil {
		h.t.Fatal(err)
	}
	id := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: info.ID, ClientID: info.ClientID},
	}
	env.Create(h.t, id)
	return id
}

func (h *harness) binding(identity, selector string) *aadv1.AzureIdentityBinding {
	h.t.Helper()
	b := testenv.NewBinding(h.ns, identity+"-"+selector, identity, h.sel(selector))
	env.Create(h.t, b)
	return b
}

// pod creates a running pod on this node with a fresh loopback IP.
func (h *harness) pod(name, selector string, labels map[string]string) *corev1.Pod {
	h.t.Helper()
	return env.CreatePod(h.t, testenv.PodSpec{Namespace: h.ns, Name: name, Node: h.node, Binding: h.sel(selector), Labels: labels, IP: nextPodIP()})
}

// sel makes a selector unique to the test: bindings match pods cluster-wide outside namespaced
// mode, and every test shares one API server.
func (h *harness) sel(s string) string {
	if s == "" {
		return ""
	}
	return h.ns + "-" + s
}

// assign plays MIC: creates the pod's AzureAssignedIdentity in state, and puts the identity on
// the VM when state is Assigned.
func (h *harness) assign(pod *corev1.Pod, id *aadv1.AzureIdentity, state aadv1.AssignedIdentityState) *aadv1.AzureAssignedIdentity {
	h.t.Helper()
	a := &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: pod.Name + "-" + pod.Namespace + "-" + id.Name,
			Labels: map[string]string{aadv1.AssignedIdentityNodeLabel: h.node}},
		Spec: aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: embedIdentity(id), Pod: pod.Name, PodNamespace: pod.Namespace, NodeName: h.node},
	}
	env.Create(h.t, a)
	h.setState(a, id, state)
	return a
}

func (h *harness) setState(a *aadv1.AzureAssignedIdentity, id *aadv1.AzureIdentity, state aadv1.AssignedIdentityState) {
	h.t.Helper()
	if state == aadv1.AssignedIDAssigned && id.Spec.Type == aadv1.UserAssignedMSI {
		if err := h.emu.AssignIdentity(h.vm, id.Spec.ResourceID); err != nil {
			h.t.Fatal(err)
		}
	}
	a.Status.Status = state
	if err := env.Client.Update(testenv.Context(h.t), a); err != nil {
		h.t.Fatalf("updating AAI %s: %v", a.Name, err)
	}
}

// waitStore blocks until cond holds on NMI's store (it changes only through the watch).
func (h *harness) waitStore(what string, cond func(s *Store) bool) {
	h.t.Helper()
	ctx := testenv.Context(h.t)
	for {
		ch := h.store.Changed()
		h.store.mu.RLock()
		ok := cond(h.store)
		h.store.mu.RUnlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			h.t.Fatalf("NMI never saw: %s", what)
		}
	}
}

// client returns an HTTP client whose connections come from ip (the pod's address).
func podClient(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %v: %s", a.status, err, a.body)
	}
	return m
}

// do sends a request from ip to NMI.
func (h *harness) do(ip, method, pathQuery string, hdr map[string]string) answer {
	h.t.Helper()
	req, err := http.NewRequestWithContext(testenv.Context(h.t), method, "http://"+h.addr+pathQuery, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := podClient(ip).Do(req)
	if err != nil {
		h.t.Fatalf("%s %s from %s: %v", method, pathQuery, ip, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}
}

var md = map[string]string{"Metadata": "true"}

func tokenPath(resource string, extra ...string) string {
	q := "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + url.QueryEscape(resource)
	for i := 0; i+1 < len(extra); i += 2 {
		q += "&" + extra[i] + "=" + url.QueryEscape(extra[i+1])
	}
	return q
}

// token asks for a token as pod and returns the answer.
func (h *harness) token(pod *corev1.Pod, extra ...string) answer {
	h.t.Helper()
	return h.do(pod.Status.PodIP, http.MethodGet, tokenPath(armResource, extra...), md)
}

func wantStatus(t *testing.T, a answer, status int) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
}

// audienceClient checks a token's claims with the emulator.
func (h *harness) claims(a answer) map[string]any {
	h.t.Helper()
	m := a.json(h.t)
	tok, _ := m["access_token"].(string)
	c, err := h.emu.VerifyToken(tok)
	if err != nil {
		h.t.Fatalf("token does not verify: %v", err)
	}
	return c
}

func (h *harness) imdsTokenCalls(clientID string) int64 {
	return h.emu.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: clientID})
}

var _ = strings.TrimSpace

func waitBriefly() { time.Sleep(10 * time.Millisecond) }

// embedIdentity is MIC's copy of an identity inside an assignment (an embedded resource needs
// its apiVersion and kind).
func embedIdentity(id *aadv1.AzureIdentity) *aadv1.AzureIdentity {
	c := id.DeepCopy()
	c.APIVersion, c.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	c.ResourceVersion, c.ManagedFields = "", nil
	return c
}
