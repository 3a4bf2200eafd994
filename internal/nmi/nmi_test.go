package nmi

import (
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// A bound, assigned pod gets an IMDS-shaped token for its identity; the second request is served
// from the cache (IMDS sees one call).
func TestTokenAssignedAndCached(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)

	a := h.token(pod)
	wantStatus(t, a, http.StatusOK)
	m := a.json(t)
	for _, k := range []string{"access_token", "expires_in", "expires_on", "not_before", "resource", "token_type", "client_id"} {
		if _, ok := m[k].(string); !ok {
			t.Errorf("field %s is %T, want a string (IMDS shape): %s", k, m[k], a.body)
		}
	}
	if m["client_id"] != id.Spec.ClientID || m["resource"] != armResource {
		t.Errorf("client_id %v resource %v, want %s %s", m["client_id"], m["resource"], id.Spec.ClientID, armResource)
	}
	if c := h.claims(a); c["appid"] != id.Spec.ClientID && c["azp"] != id.Spec.ClientID {
		t.Errorf("token is not for %s: %v", id.Spec.ClientID, c)
	}
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	wantStatus(t, h.token(pod), http.StatusOK)
	if n := h.imdsTokenCalls(id.Spec.ClientID); n != 1 {
		t.Errorf("IMDS saw %d token calls for two pod requests, want 1 (cache)", n)
	}
}

// Every route and its answers.
func TestRoutes(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	ip := pod.Status.PodIP

	cases := []struct {
		name, method, path string
		hdr                map[string]string
		from               string
		want               int
	}{
		{"no metadata header", "GET", tokenPath(armResource), nil, ip, 400},
		{"metadata header false", "GET", tokenPath(armResource), map[string]string{"Metadata": "false"}, ip, 400},
		{"upper-case Metadata word", "GET", strings.Replace(tokenPath(armResource), "/metadata", "/Metadata", 1), md, ip, 200},
		{"trailing slash", "GET", strings.Replace(tokenPath(armResource), "token?", "token/?", 1), md, ip, 200},
		{"no resource", "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01", md, ip, 400},
		{"repeated resource", "GET", tokenPath(armResource) + "&resource=https%3A%2F%2Fvault.azure.net", md, ip, 400},
		{"bad encoding", "GET", "/metadata/identity/oauth2/token?resource=%zz", md, ip, 400},
		{"POST", "POST", tokenPath(armResource), md, ip, 405},
		{"obfuscated backslash", "GET", `/metadata/identity\oauth2\token?resource=x`, md, ip, 400},
		{"obfuscated extra segment", "GET", "/metadata/identity/foo/oauth2/token?resource=x", md, ip, 400},
		{"obfuscated dot-dot", "GET", "/metadata/identity/oauth2/token/../token?resource=x", md, ip, 400},
		{"obfuscated encoded slash", "GET", "/metadata/identity%2Foauth2/token?resource=x", md, ip, 400},
		{"capital Identity refused, not proxied", "GET", "/metadata/Identity/oauth2/token?resource=x", md, ip, 400},
		{"upper-case token path refused", "GET", "/METADATA/IDENTITY/OAUTH2/TOKEN?resource=x", md, ip, 400},
		{"instance proxied", "GET", "/metadata/instance?api-version=2021-02-01", md, ip, 200},
		{"instance with X-Forwarded-For proxied without it", "GET", "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, ip, 200},
		{"proxy needs metadata header", "GET", "/doesnotexist", nil, ip, 400},
		{"proxy unknown path", "GET", "/doesnotexist", md, ip, 404},
		{"unknown caller", "GET", tokenPath(armResource), md, "127.1.255.254", 404},
		{"host token", "GET", "/host/token/?resource=" + armResource, map[string]string{"podname": "app", "podns": h.ns}, "127.0.0.1", 200},
		{"host token without headers", "GET", "/host/token/?resource=" + armResource, nil, "127.0.0.1", 400},
		{"host token from a pod", "GET", "/host/token/?resource=" + armResource, map[string]string{"podname": "app", "podns": h.ns}, ip, 403},
		{"host token unknown pod", "GET", "/host/token/?resource=" + armResource, map[string]string{"podname": "nope", "podns": h.ns}, "127.0.0.1", 403},
		{"host token no resource", "GET", "/host/token/", map[string]string{"podname": "app", "podns": h.ns}, "127.0.0.1", 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := h.do(c.from, c.method, c.path, c.hdr)
			wantStatus(t, a, c.want)
			if c.want >= 400 && c.want != 404 || strings.Contains(c.name, "unknown caller") {
				if m := a.json(t); m["error"] == "" || m["error_description"] == "" {
					t.Errorf("error answer lacks error/error_description: %s", a.body)
				}
			}
		})
	}
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Status: 400}); n != 0 {
		t.Errorf("IMDS refused %d proxied requests (X-Forwarded-For or Metadata forwarded wrongly)", n)
	}
	hostAns := h.do("127.0.0.1", "GET", "/host/token/?resource="+armResource, map[string]string{"podname": "app", "podns": h.ns})
	m := hostAns.json(t)
	if m["clientid"] != id.Spec.ClientID {
		t.Errorf("host token clientid %v, want %s", m["clientid"], id.Spec.ClientID)
	}
	if tok, ok := m["token"].(map[string]any); !ok || tok["access_token"] == "" {
		t.Errorf("host token answer has no token object: %s", hostAns.body)
	}
}

func TestBlockInstanceMetadata(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.BlockInstanceMetadata = true }})
	pod := h.pod("app", "", nil)
	wantStatus(t, h.do(pod.Status.PodIP, "GET", "/metadata/instance?api-version=2021-02-01", md), 403)
	wantStatus(t, h.do(pod.Status.PodIP, "GET", "/Metadata//instance/compute", nil), 403)
	wantStatus(t, h.do(pod.Status.PodIP, "GET", "/metadata/scheduledevents", md), 404) // proxied
}

// Selecting among several identities by client_id, mi_res_id, msi_res_id and object_id; the
// default choice is the first by namespace/name.
func TestSelection(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"alpha", "beta"}})
	alpha, beta := h.identity("alpha"), h.identity("beta")
	h.binding("alpha", "both")
	h.binding("beta", "both")
	pod := h.pod("app", "both", nil)
	h.assign(pod, alpha, aadv1.AssignedIDAssigned)
	h.assign(pod, beta, aadv1.AssignedIDAssigned)
	betaInfo, _ := h.emu.Identity("beta")

	check := func(name string, a answer, want *aadv1.AzureIdentity) {
		t.Helper()
		wantStatus(t, a, 200)
		if got := a.json(t)["client_id"]; got != want.Spec.ClientID {
			t.Errorf("%s: got client %v, want %s (%s)", name, got, want.Spec.ClientID, want.Name)
		}
	}
	check("default", h.token(pod), alpha)
	check("client_id", h.token(pod, "client_id", beta.Spec.ClientID), beta)
	check("client_id upper case", h.token(pod, "client_id", strings.ToUpper(beta.Spec.ClientID)), beta)
	check("mi_res_id", h.token(pod, "mi_res_id", beta.Spec.ResourceID), beta)
	check("msi_res_id", h.token(pod, "msi_res_id", strings.ToUpper(beta.Spec.ResourceID)), beta)
	check("object_id", h.token(pod, "object_id", betaInfo.PrincipalID), beta)
	wantStatus(t, h.token(pod, "client_id", alpha.Spec.ClientID, "msi_res_id", beta.Spec.ResourceID), 403)
	wantStatus(t, h.token(pod, "client_id", "00000000-0000-0000-0000-00000000dead"), 403)
	wantStatus(t, h.token(pod, "object_id", "00000000-0000-0000-0000-00000000dead"), 403)
	wantStatus(t, h.token(pod, "mi_res_id", alpha.Spec.ResourceID, "msi_res_id", beta.Spec.ResourceID), 400)
}

// Not bound: refused at once with 403, and IMDS never asked.
func TestNotBound(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web", "other"}})
	web, other := h.identity("web"), h.identity("other")
	h.binding("web", "web")
	h.binding("other", "other")
	pod := h.pod("app", "web", nil)
	h.assign(pod, web, aadv1.AssignedIDAssigned)
	if err := h.emu.AssignIdentity(h.vm, other.Spec.ResourceID); err != nil {
		t.Fatal(err)
	}
	unlabelled := h.pod("plain", "", nil)
	stranger := h.pod("stranger", "nobody", nil)

	a := h.token(pod, "client_id", other.Spec.ClientID)
	wantStatus(t, a, 403)
	if !strings.Contains(string(a.body), pod.Name) || !strings.Contains(string(a.body), other.Spec.ClientID) {
		t.Errorf("403 should name the pod and the requested ID: %s", a.body)
	}
	wantStatus(t, h.token(unlabelled), 403)
	wantStatus(t, h.token(stranger), 403)
	if n := h.imdsTokenCalls(other.Spec.ClientID); n != 0 {
		t.Errorf("IMDS was asked %d times for an identity the pod is not bound to", n)
	}
}

// A waiting request is woken by the assignment becoming Assigned: the retry interval is an hour,
// so only the watch can end the wait with a token.
func TestWaitWokenByAssignment(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) {
		c.FindIdentityRetryInterval = 3600e9
	}})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)

	done := make(chan answer, 1)
	go func() { done <- h.token(pod) }()
	// MIC creates the assignment, then assigns it; the request must not have returned before.
	h.waitStore("binding and identity", func(s *Store) bool { return len(s.bySelector[h.sel("web")]) == 1 })
	a := h.assign(pod, id, aadv1.AssignedIDCreated)
	h.waitStore("AAI Created", func(s *Store) bool { return len(s.aaisByPod[h.ns+"/app"]) == 1 })
	select {
	case r := <-done:
		t.Fatalf("answered %d before the identity was assigned: %s", r.status, r.body)
	default:
	}
	h.setState(a, id, aadv1.AssignedIDAssigned)
	r := <-done
	wantStatus(t, r, 200)
}

// Budget exhausted: 404 (azidentity retries it); Retry-After mode: 503 + Retry-After at once.
func TestNotAssigned(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	wantStatus(t, h.token(pod), 404)
	h.assign(pod, id, aadv1.AssignedIDCreated)
	wantStatus(t, h.token(pod), 404)

	h2 := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) {
		c.SetRetryAfterHeader, c.RetryAfter = true, 20e9
		c.FindIdentityRetryInterval = 3600e9 // would hang if the flag did not stop the wait
	}})
	h2.identity("web")
	h2.binding("web", "web")
	pod2 := h2.pod("app", "web", nil)
	a := h2.token(pod2)
	wantStatus(t, a, 503)
	if a.header.Get("Retry-After") != "20" {
		t.Errorf("Retry-After %q, want 20", a.header.Get("Retry-After"))
	}
}

// Right after an assignment IMDS still says "Identity not found": NMI retries within the budget.
func TestPropagationRetried(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, timing: emulator.Timing{IMDSPropagation: emulator.D(300e6)},
		cfg: func(c *Config) { c.FindIdentityRetryInterval = 3600e9 }})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(pod, "client_id", id.Spec.ClientID), 200)
	if n := h.emu.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Status: 400}); n == 0 {
		t.Log("IMDS answered at once (propagation already over); retry path not exercised this run")
	}
}

// Unbinding takes effect on the very next request, though a token for it is cached.
func TestUnbindInvalidates(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	b := h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(pod), 200)
	if err := env.Client.Delete(testenv.Context(t), b); err != nil {
		t.Fatal(err)
	}
	h.waitStore("binding deleted", func(s *Store) bool { return len(s.bySelector[h.sel("web")]) == 0 })
	wantStatus(t, h.token(pod), 403)

	// Re-bind, then change the identity's client ID: the old assignment no longer authorizes it.
	h.binding("web", "web")
	h.waitStore("binding back", func(s *Store) bool { return len(s.bySelector[h.sel("web")]) == 1 })
	wantStatus(t, h.token(pod), 200)
	id.Spec.ClientID = "00000000-0000-0000-0000-0000000000cc"
	if err := env.Client.Update(testenv.Context(t), id); err != nil {
		t.Fatal(err)
	}
	h.waitStore("identity edited", func(s *Store) bool {
		i := s.identities[h.ns+"/web"]
		return i != nil && i.Spec.ClientID == id.Spec.ClientID
	})
	wantStatus(t, h.token(pod), 404)
}

// A new pod that reuses a terminated pod's IP never gets the old pod's identity; two live pods
// claiming one IP are refused.
func TestPodIPReuse(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}})
	id := h.identity("web")
	h.binding("web", "web")
	old := h.pod("old", "web", nil)
	h.assign(old, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(old), 200)
	ip := old.Status.PodIP
	env.SetPodStatus(t, old, corev1.PodSucceeded, ip)
	fresh := env.CreatePod(t, testenv.PodSpec{Namespace: h.ns, Name: "fresh", Node: h.node, IP: ip})
	h.waitStore("fresh pod", func(s *Store) bool {
		p := s.podsByKey[h.ns+"/old"]
		return s.podsByKey[h.ns+"/fresh"] != nil && p != nil && p.Phase == corev1.PodSucceeded
	})
	a := h.token(fresh)
	wantStatus(t, a, 403)
	if !strings.Contains(string(a.body), "fresh") {
		t.Errorf("refusal should name the new pod: %s", a.body)
	}
	// Both look running (the old pod's end not yet seen): refuse rather than guess.
	env.SetPodStatus(t, old, corev1.PodRunning, ip)
	h.waitStore("old running again", func(s *Store) bool { return s.podsByKey[h.ns+"/old"].Phase == corev1.PodRunning })
	wantStatus(t, h.token(fresh), 503)
	// A pending pod with the IP does not lose to the running one any more: the running pod's
	// end may not be visible yet, so neither is served.
	env.SetPodStatus(t, fresh, corev1.PodPending, ip)
	h.waitStore("fresh pending", func(s *Store) bool { return s.podsByKey[h.ns+"/fresh"].Phase == corev1.PodPending })
	wantStatus(t, h.token(old), 503)
}

// Exception pods and MIC's pods get IMDS passthrough.
func TestExceptions(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"node-id"}, cfg: func(c *Config) { c.MICNamespace = "" }})
	info, _ := h.emu.Identity("node-id")
	if err := h.emu.AssignIdentity(h.vm, info.ID); err != nil {
		t.Fatal(err)
	}
	env.Create(t, &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "exc"},
		Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "Agent"}}})
	agent := h.pod("agent", "", map[string]string{"app": "agent"})
	other := h.pod("other", "", map[string]string{"app": "web"})
	h.waitStore("exception", func(s *Store) bool { return len(s.exceptions[h.ns]) == 1 })
	a := h.token(agent, "client_id", info.ClientID)
	wantStatus(t, a, 200)
	if a.json(t)["client_id"] != info.ClientID {
		t.Errorf("passthrough answer for the wrong identity: %s", a.body)
	}
	wantStatus(t, h.token(other, "client_id", info.ClientID), 403)

	// MIC short-circuit: namespace = --MICNamespace and ServiceAccount = --mic-service-account.
	h2 := newHarness(t, harnessOpts{identities: []string{"node-id"}})
	h2.srv.cfg.MICNamespace, h2.srv.cfg.MICServiceAccount = h2.ns, "podidentity-mic"
	info2, _ := h2.emu.Identity("node-id")
	_ = h2.emu.AssignIdentity(h2.vm, info2.ID)
	micPod := func(name, sa string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: h2.ns, Name: name,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "mic-abc", UID: "u1"}}},
			Spec: corev1.PodSpec{NodeName: h2.node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		env.Create(t, p)
		env.SetPodStatus(t, p, corev1.PodRunning, nextPodIP())
		return p
	}
	mic := micPod("mic-abc-1", "podidentity-mic")
	wantStatus(t, h2.token(mic, "client_id", info2.ClientID), 200)
	// A pod that claims MIC's ReplicaSet in an ownerReference of its own (anyone who may create
	// pods there can) but runs as another ServiceAccount gets no passthrough.
	impostor := micPod("mic-abc-2", "")
	h2.waitStore("impostor", func(s *Store) bool { return s.podsByKey[h2.ns+"/mic-abc-2"] != nil })
	wantStatus(t, h2.token(impostor, "client_id", info2.ClientID), 403)
}

// Namespaced mode: a pod labelled with another namespace's selector gets nothing.
func TestNamespacedIsolation(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) { c.ForceNamespaced = true }})
	id := h.identity("web")
	h.binding("web", "web")
	owner := h.pod("owner", "web", nil)
	h.assign(owner, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(owner), 200)

	otherNS := env.Namespace(t)
	intruder := env.CreatePod(t, testenv.PodSpec{Namespace: otherNS, Name: "intruder", Node: h.node, Binding: h.sel("web"), IP: nextPodIP()})
	// Even an assignment (as a misconfigured MIC might write) does not help.
	h.assign(intruder, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(intruder), 403)
	wantStatus(t, h.token(intruder, "client_id", id.Spec.ClientID), 403)

	// Without namespaced mode the per-identity annotation does the same.
	h2 := newHarness(t, harnessOpts{identities: []string{"web"}})
	id2 := h2.identity("web")
	id2.Annotations = map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
	if err := env.Client.Update(testenv.Context(t), id2); err != nil {
		t.Fatal(err)
	}
	h2.binding("web", "web")
	ns3 := env.Namespace(t)
	intruder2 := env.CreatePod(t, testenv.PodSpec{Namespace: ns3, Name: "intruder", Node: h2.node, Binding: h2.sel("web"), IP: nextPodIP()})
	h2.assign(intruder2, id2, aadv1.AssignedIDAssigned)
	wantStatus(t, h2.token(intruder2), 403)
}

// Managed mode: bindings and identities in the pod's namespace, no assignments, no waiting.
func TestManagedMode(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) {
		c.OperationMode, c.ForceNamespaced = ModeManaged, true
		c.FindIdentityRetryInterval = 3600e9
	}})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	if err := h.emu.AssignIdentity(h.vm, id.Spec.ResourceID); err != nil {
		t.Fatal(err)
	}
	h.waitStore("binding", func(s *Store) bool { return len(s.bySelector[h.sel("web")]) == 1 })
	wantStatus(t, h.token(pod), 200)
	wantStatus(t, h.token(pod, "client_id", "00000000-0000-0000-0000-00000000dead"), 403)
}

// The per-pod budget applies to requests that reach Azure; cached answers are not limited.
func TestRateLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) { c.PodRateLimit, c.PodRateBurst = 0.001, 2 }})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	ip := pod.Status.PodIP
	wantStatus(t, h.do(ip, "GET", tokenPath("https://a.example/"), md), 200)
	wantStatus(t, h.do(ip, "GET", tokenPath("https://b.example/"), md), 200)
	a := h.do(ip, "GET", tokenPath("https://c.example/"), md)
	wantStatus(t, a, 429)
	if a.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	for range 5 {
		wantStatus(t, h.do(ip, "GET", tokenPath("https://a.example/"), md), 200) // cached
	}
	other := h.pod("other", "web", nil)
	h.assign(other, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.do(other.Status.PodIP, "GET", tokenPath("https://c.example/"), md), 200)
}

// Prefetch on Assigned: the pod's first request is a cache hit.
func TestPrefetch(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web"}, cfg: func(c *Config) { c.PrefetchResources = []string{armResource} }})
	id := h.identity("web")
	h.binding("web", "web")
	pod := h.pod("app", "web", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	key := cacheKey{cred: h.srv.staticCredKey(id), resource: armResource}
	for h.srv.cache.Lookup(key) == nil {
		select {
		case <-h.store.Changed():
		case <-testenv.Context(t).Done():
			t.Fatal("prefetch never filled the cache")
		default:
			waitBriefly()
		}
	}
	wantStatus(t, h.token(pod), 200)
	if n := h.imdsTokenCalls(id.Spec.ClientID); n != 1 {
		t.Errorf("IMDS token calls %d, want 1 (the prefetch)", n)
	}
}
