package nmi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Tests of issue 11: every way to a token of an identity the pod is not bound to is closed.

// events records Warning events in memory (NMI's EventSink).
type events struct {
	mu   sync.Mutex
	list []string // reason: object: message
}

func (e *events) Event(obj runtime.Object, _, reason, msg string) {
	name := ""
	if m, ok := obj.(metav1.Object); ok {
		name = m.GetNamespace() + "/" + m.GetName()
	}
	e.mu.Lock()
	e.list = append(e.list, reason+": "+name+": "+msg)
	e.mu.Unlock()
}

func (e *events) find(reason, object string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.list {
		if strings.HasPrefix(ev, reason+": "+object+": ") {
			return ev
		}
	}
	return ""
}

// Item 1: an AzureIdentity that pairs an assignable resource ID with another identity's client ID
// gets no token of that other identity — IMDS is asked by resource ID and the token must show
// both IDs — in standard and in managed mode (where there is no MIC to check anything).
func TestClientIDOfAnotherIdentityIsRefused(t *testing.T) {
	for _, mode := range []string{ModeStandard, ModeManaged} {
		t.Run(mode, func(t *testing.T) {
			ev := &events{}
			h := newHarness(t, harnessOpts{identities: []string{"victim", "assignable"}, cfg: func(c *Config) {
				c.Events = ev
				if mode == ModeManaged {
					c.OperationMode, c.ForceNamespaced = ModeManaged, true
				}
			}})
			victim, _ := h.emu.Identity("victim")
			assignable, _ := h.emu.Identity("assignable")
			// Both identities are on the VM: the victim for a pod of its own, the other one
			// because MIC assigned (or anyone put) it there.
			for _, id := range []string{victim.ID, assignable.ID} {
				if err := h.emu.AssignIdentity(h.vm, id); err != nil {
					t.Fatal(err)
				}
			}
			evil := &aadv1.AzureIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "evil", Annotations: map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}},
				Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: assignable.ID, ClientID: victim.ClientID},
			}
			env.Create(t, evil)
			b := h.binding("evil", "evil")
			pod := h.pod("attacker", "evil", nil)
			if mode == ModeStandard {
				h.assign(pod, evil, aadv1.AssignedIDAssigned)
			} else {
				h.waitStore("pod and binding", func(s *Store) bool { return s.podsByKey[h.ns+"/attacker"] != nil && s.bindings[h.ns+"/"+b.Name] != nil })
			}
			for _, extra := range [][]string{nil, {"client_id", victim.ClientID}, {"msi_res_id", assignable.ID}} {
				a := h.token(pod, extra...)
				wantStatus(t, a, http.StatusForbidden)
				for _, want := range []string{"identity_mismatch", victim.ClientID, assignable.ClientID} {
					if !strings.Contains(string(a.body), want) {
						t.Errorf("refusal should name %s: %s", want, a.body)
					}
				}
			}
			if n := h.imdsTokenCalls(victim.ClientID); n != 0 {
				t.Errorf("IMDS issued %d tokens of the victim identity", n)
			}
			if e := ev.find("IdentityMismatch", h.ns+"/"+b.Name); e == "" {
				t.Errorf("no IdentityMismatch Warning on binding %s; events: %v", b.Name, ev.list)
			}
		})
	}
}

// Item 2: a service-principal identity may use only the documented key of a Secret in its own
// namespace, and send it only to an allowed Azure AD authority.
func TestServicePrincipalPolicy(t *testing.T) {
	ev := &events{}
	h := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}},
		cfg: func(c *Config) { c.Events = ev }})
	victimNS := env.Namespace(t)
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: victimNS, Name: "team-sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "own"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "other-key"}, Data: map[string][]byte{"password": []byte("s3cret")}})
	tenant := h.emu.Config().TenantID
	sp := func(name string, ref corev1.SecretReference, adEndpoint string) *corev1.Pod {
		id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: tenant, ClientPassword: ref, ADEndpoint: adEndpoint}}
		env.Create(t, id)
		h.binding(name, name)
		p := h.pod(name, name, nil)
		h.assign(p, id, aadv1.AssignedIDAssigned)
		return p
	}
	cross := sp("cross", corev1.SecretReference{Name: "team-sp", Namespace: victimNS}, "")
	// Loopback where nothing listens: the credential would be sent there if NMI let it.
	elsewhere := sp("elsewhere", corev1.SecretReference{Name: "own"}, "https://127.0.0.2:1/")
	otherKey := sp("other-key", corev1.SecretReference{Name: "other-key"}, "")
	own := sp("own", corev1.SecretReference{Name: "own", Namespace: h.ns}, h.emu.AADURL()+"/")

	a := h.token(cross)
	wantStatus(t, a, http.StatusForbidden)
	for _, want := range []string{"identity_refused", victimNS + "/team-sp", "--allow-cross-namespace-secrets"} {
		if !strings.Contains(string(a.body), want) {
			t.Errorf("cross-namespace refusal should name %s: %s", want, a.body)
		}
	}
	a = h.token(elsewhere)
	wantStatus(t, a, http.StatusForbidden)
	for _, want := range []string{"identity_refused", "https://127.0.0.2:1/", h.emu.AADURL(), "--allowed-ad-endpoints"} {
		if !strings.Contains(string(a.body), want) {
			t.Errorf("adEndpoint refusal should name %s: %s", want, a.body)
		}
	}
	a = h.token(otherKey)
	wantStatus(t, a, http.StatusForbidden)
	if !strings.Contains(string(a.body), "clientSecret") {
		t.Errorf("refusal should name the key to use: %s", a.body)
	}
	wantStatus(t, h.token(own), http.StatusOK)
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken}); n != 1 {
		t.Errorf("Azure AD saw %d token requests, want 1 (only the identity with its own Secret)", n)
	}
	for _, b := range []string{"cross-cross", "elsewhere-elsewhere"} {
		if ev.find("IdentityRefused", h.ns+"/"+b) == "" {
			t.Errorf("no IdentityRefused Warning on binding %s; events: %v", b, ev.list)
		}
	}
	if got := h.secrets.Watching(); strings.Contains(strings.Join(got, ","), victimNS) {
		t.Errorf("NMI watches the other namespace's Secret: %v", got)
	}

	// The operator may allow cross-namespace Secrets, but never for a namespaced identity.
	h2 := newHarness(t, harnessOpts{principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}},
		cfg: func(c *Config) { c.AllowCrossNamespaceSecrets = true }})
	allowed := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h2.ns, Name: "cross"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: h2.emu.Config().TenantID, ClientPassword: corev1.SecretReference{Name: "team-sp", Namespace: victimNS}}}
	namespaced := allowed.DeepCopy()
	namespaced.Name, namespaced.Annotations = "cross-namespaced", map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
	for _, id := range []*aadv1.AzureIdentity{allowed, namespaced} {
		env.Create(t, id)
		h2.binding(id.Name, id.Name)
	}
	p1, p2 := h2.pod("p1", "cross", nil), h2.pod("p2", "cross-namespaced", nil)
	h2.assign(p1, allowed, aadv1.AssignedIDAssigned)
	h2.assign(p2, namespaced, aadv1.AssignedIDAssigned)
	wantStatus(t, h2.token(p1), http.StatusOK)
	a = h2.token(p2)
	wantStatus(t, a, http.StatusForbidden)
	if !strings.Contains(string(a.body), "namespaced identity") {
		t.Errorf("refusal should say why: %s", a.body)
	}
}

// Item 5: a pod that is being deleted, or whose containers have all exited, is gone: it is
// served nothing, and a new pod that got its IP is refused (503, retried) until the old one's
// end is visible, rather than answered with the old pod's identities.
func TestEndingPodsAreGone(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	h.binding("web", "web")
	ctx := testenv.Context(t)

	old := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "old", Node: h.node, Binding: h.sel("web"), IP: nextPodIP()})
	h.assign(old, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(old), http.StatusOK)
	h.deleteKeepingPod(old)
	a := h.token(old)
	wantStatus(t, a, http.StatusNotFound)

	fresh := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "fresh", Node: h.node, IP: old.Status.PodIP})
	env.SetPodStatus(t, fresh, corev1.PodPending, old.Status.PodIP)
	h.waitStore("fresh pod with the IP", func(s *Store) bool { q := s.podsByKey[h.ns+"/fresh"]; return q != nil && q.IP != "" })
	a = h.token(fresh)
	wantStatus(t, a, http.StatusServiceUnavailable)
	if a.header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %v", a.header)
	}

	// Every container exited, phase still Running (the kubelet has not reported the end yet).
	exited := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "exited", Node: h.node, Binding: h.sel("web"), IP: nextPodIP()})
	h.assign(exited, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(exited), http.StatusOK)
	exited.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}}
	if err := env.Client.Status().Update(ctx, exited); err != nil {
		t.Fatal(err)
	}
	h.waitStore("containers exited", func(s *Store) bool { p := s.podsByKey[h.ns+"/exited"]; return p != nil && p.ContainersExited })
	wantStatus(t, h.token(exited), http.StatusNotFound)

	// Item 10: /host/token skips them too.
	for _, name := range []string{"old", "exited"} {
		a := h.do("127.0.0.1", http.MethodGet, "/host/token/?resource="+armResource, map[string]string{"podname": name, "podns": h.ns})
		wantStatus(t, a, http.StatusForbidden)
		if !strings.Contains(string(a.body), "terminated or being deleted") {
			t.Errorf("/host/token refusal for %s should say why: %s", name, a.body)
		}
	}
	env.SetPodStatus(t, exited, corev1.PodSucceeded, exited.Status.PodIP)
	h.waitStore("exited succeeded", func(s *Store) bool { return s.podsByKey[h.ns+"/exited"].Phase == corev1.PodSucceeded })
	wantStatus(t, h.do("127.0.0.1", http.MethodGet, "/host/token/?resource="+armResource, map[string]string{"podname": "exited", "podns": h.ns}), http.StatusForbidden)
}

// Item 11: object_id selects a service principal's token too. The object ID a token reveals was
// learned under the credentials key with the Secret's version and looked up without it, so a
// service principal never matched and a pod bound to one could not select another identity by
// object_id either.
func TestObjectIDWithServicePrincipal(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, principals: []emulator.PrincipalConfig{{AppID: spAppID, Secrets: []string{"s3cret"}}}})
	web := h.identity("web")
	webInfo, _ := h.emu.Identity("web")
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "sp"}, Data: map[string][]byte{"clientSecret": []byte("s3cret")}})
	// "a-sp" sorts before "web": it is tried first.
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "a-sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: h.emu.Config().TenantID, ClientPassword: corev1.SecretReference{Name: "sp"}}}
	env.Create(t, sp)
	h.binding("a-sp", "app")
	h.binding("web", "app")
	pod := h.pod("app", "app", nil)
	h.assign(pod, sp, aadv1.AssignedIDAssigned)
	h.assign(pod, web, aadv1.AssignedIDAssigned)

	a := h.token(pod, "object_id", webInfo.PrincipalID)
	wantStatus(t, a, http.StatusOK)
	if c := h.claims(a); c["oid"] != webInfo.PrincipalID {
		t.Errorf("object_id %s answered with oid %v", webInfo.PrincipalID, c["oid"])
	}
	spOID, _ := h.claims(h.token(pod, "client_id", spAppID))["oid"].(string)
	if spOID == "" {
		t.Fatal("the service principal's token has no oid")
	}
	if c := h.claims(h.token(pod, "object_id", spOID)); c["appid"] != spAppID {
		t.Errorf("object_id of the service principal answered with %v", c["appid"])
	}
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken}); n != 1 {
		t.Errorf("Azure AD saw %d token requests, want 1 (the object ID lookup must use the cache)", n)
	}
}

// Item 12: a pod refused in a loop writes one log line per interval, with the number left out,
// and a path of any length is logged clipped.
func TestRefusalLogIsSampled(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	pod := h.pod("unbound", "", nil)
	h.waitStore("pod", func(s *Store) bool { return s.podsByKey[h.ns+"/unbound"] != nil })
	var mu sync.Mutex
	var lines []string
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		lines = append(lines, args)
		mu.Unlock()
	}, funcr.Options{})
	srv := NewServer(h.srv.cfg, h.store, nil, NewMetrics(nil), log)
	for i := range 50 {
		path := tokenPath(armResource)
		if i == 0 {
			path = tokenPath(armResource) + "&resource=" + strings.Repeat("a", 8000) // 400: repeated
		}
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.Header.Set("Metadata", "true")
		r.RemoteAddr = pod.Status.PodIP + ":40000"
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden && w.Code != http.StatusBadRequest {
			t.Fatalf("request %d: %d %s", i, w.Code, w.Body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	refused := 0
	for _, l := range lines {
		if strings.Contains(l, "token request refused") {
			refused++
			if len(l) > 2000 {
				t.Errorf("log line of %d bytes: the path must be clipped", len(l))
			}
		}
	}
	// One line for the 400 (a refusal of another kind) and one for the 403s.
	if refused > 2 {
		t.Errorf("%d refusal lines for 50 refused requests of one pod, want at most 2", refused)
	}
}

// The opt-in --serve-deleting-pods keeps serving a pod in its termination grace period, as
// upstream did, but only while it alone claims its IP; exited containers still end it.
func TestServeDeletingPodsOptIn(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) { c.ServeDeletingPods = true }})
	id := h.identity("web")
	h.binding("web", "web")
	ctx := testenv.Context(t)
	p := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "draining", Node: h.node, Binding: h.sel("web"), IP: nextPodIP()})
	h.assign(p, id, aadv1.AssignedIDAssigned)
	h.deleteKeepingPod(p)
	wantStatus(t, h.token(p), http.StatusOK)

	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
		t.Fatal(err)
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}}}
	if err := env.Client.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	h.waitStore("containers exited", func(s *Store) bool { q := s.podsByKey[h.ns+"/draining"]; return q != nil && q.ContainersExited })
	wantStatus(t, h.token(p), http.StatusNotFound)

	fresh := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "fresh", Node: h.node, IP: p.Status.PodIP})
	h.waitStore("fresh pod with the IP", func(s *Store) bool { q := s.podsByKey[h.ns+"/fresh"]; return q != nil && q.IP != "" })
	wantStatus(t, h.token(fresh), http.StatusServiceUnavailable)
}

// deleteKeepingPod deletes a pod that a finalizer keeps in the API, Running, with its
// deletionTimestamp set (a pod in its termination grace period), and waits until NMI sees that.
func (h *harness) deleteKeepingPod(p *corev1.Pod) {
	t, ctx := h.t, testenv.Context(h.t)
	p.Finalizers = []string{"podidentity.io/test"}
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var cur corev1.Pod
		if env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur) == nil {
			cur.Finalizers = nil
			_ = env.Client.Update(ctx, &cur)
		}
	})
	if err := env.Client.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	h.waitStore("pod "+p.Name+" deleting", func(s *Store) bool { q := s.podsByKey[p.Namespace+"/"+p.Name]; return q != nil && q.Deleting })
}
