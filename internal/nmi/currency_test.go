package nmi

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/testenv"
)

// boundPod sets up one bound, assigned pod of identity "x" with a cached token.
func boundPod(t *testing.T, h *harness) (*corev1.Pod, *aadv1.AzureIdentity, *aadv1.AzureIdentityBinding) {
	t.Helper()
	id := h.identity("x")
	b := h.binding("x", "x")
	pod := h.pod("a", "x", nil)
	h.assign(pod, id, aadv1.AssignedIDAssigned)
	wantStatus(t, h.token(pod), http.StatusOK) // the cache is warm from here on
	return pod, id, b
}

// cut cuts NMI off the API server and waits until its currency tracker noticed (a closed
// connection ends the watches at once; a silent one only after HTTP/2's health check).
func (h *harness) cut() {
	h.t.Helper()
	h.api.Cut()
	ctx := testenv.Context(h.t)
	for h.store.view.snapshot().current {
		select {
		case <-ctx.Done():
			h.t.Fatal("NMI never noticed that its watches were cut")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// wantCatchingUp checks that a request is answered 503 + Retry-After with the catching-up message.
func wantCatchingUp(t *testing.T, a answer) {
	t.Helper()
	wantStatus(t, a, http.StatusServiceUnavailable)
	if !strings.Contains(string(a.body), "view_not_current") || !strings.Contains(string(a.body), "catching up") {
		t.Errorf("503 without the catching-up error: %s", a.body)
	}
	if ra := a.header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1", ra)
	}
}

// untilRefused restores NMI's connection and asks as ip until NMI refuses (403/404), failing
// on any token in between: catching up must never grant from the old view.
func (h *harness) untilRefused(ip string) answer {
	h.t.Helper()
	h.api.Restore()
	ctx := testenv.Context(h.t)
	for {
		a := h.do(ip, http.MethodGet, tokenPath(armResource), md)
		switch a.status {
		case http.StatusOK:
			h.t.Fatalf("a token was served from the old view while NMI caught up: %s", a.body)
		case http.StatusForbidden, http.StatusNotFound:
			return a
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("NMI never caught up; last answer %d: %s", a.status, a.body)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A pod deleted while NMI's watch is cut, and its IP given to an unbound pod of another
// namespace: NMI's view still maps the IP to the old, bound pod, and must not serve its token.
func TestStaleViewDoesNotServeReusedIP(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}, apiProxy: true})
	a, _, _ := boundPod(t, h)
	h.cut()
	ctx := testenv.Context(t)
	if err := env.Client.Delete(ctx, a, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	ns2 := env.Namespace(t)
	env.CreatePod(t, testenv.PodSpec{Namespace: ns2, Name: "b", Node: h.node, IP: a.Status.PodIP})
	if h.store.podByKey(a.Namespace, a.Name) == nil {
		t.Fatal("NMI saw the delete although cut off: the test proves nothing")
	}
	wantCatchingUp(t, h.token(a)) // from the reused IP
	h.untilRefused(a.Status.PodIP)
}

// A pod relabelled away from its binding while NMI is cut off gets no token.
func TestStaleViewHonoursRelabel(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}, apiProxy: true})
	pod, _, _ := boundPod(t, h)
	h.cut()
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Labels[aadv1.PodLabelKey] = h.sel("unbound")
	if err := env.Client.Patch(testenv.Context(t), pod, patch); err != nil {
		t.Fatal(err)
	}
	wantCatchingUp(t, h.token(pod))
	wantStatus(t, h.untilRefused(pod.Status.PodIP), http.StatusForbidden)
}

// A binding deleted while NMI is cut off grants nothing.
func TestStaleViewHonoursBindingDelete(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}, apiProxy: true})
	pod, _, b := boundPod(t, h)
	h.cut()
	if err := env.Client.Delete(testenv.Context(t), b); err != nil {
		t.Fatal(err)
	}
	wantCatchingUp(t, h.token(pod))
	wantStatus(t, h.untilRefused(pod.Status.PodIP), http.StatusForbidden)
}

// An identity deleted while NMI is cut off grants nothing.
func TestStaleViewHonoursIdentityDelete(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}, apiProxy: true})
	pod, id, _ := boundPod(t, h)
	h.cut()
	if err := env.Client.Delete(testenv.Context(t), id); err != nil {
		t.Fatal(err)
	}
	wantCatchingUp(t, h.token(pod))
	wantStatus(t, h.untilRefused(pod.Status.PodIP), http.StatusForbidden)
}

// While the view settles after a cut, an unchanged grant is served once the API server confirms
// it; when everything is current, no confirmation read is made at all.
func TestCatchingUpConfirmsAndCurrentViewReadsNothing(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}, apiProxy: true,
		cfg: func(c *Config) { c.ViewSettle = time.Minute }})
	pod, _, _ := boundPod(t, h)
	confirmed := h.srv.metrics.viewConfirmations.WithLabelValues("confirmed")

	conns, sent := h.api.accepted.Load(), h.api.sent.Load()
	for range 20 {
		wantStatus(t, h.token(pod), http.StatusOK)
	}
	if n := h.api.accepted.Load() - conns; n != 0 {
		t.Errorf("%d new connections to the API server for 20 cached answers from a current view, want 0", n)
	}
	if n := testutil.ToFloat64(confirmed); n != 0 {
		t.Errorf("%v confirmations while current, want 0", n)
	}
	t.Logf("bytes NMI sent to the API server during 20 cached answers: %d", h.api.sent.Load()-sent)

	h.cut()
	wantCatchingUp(t, h.token(pod)) // the confirmation read fails while cut
	h.api.Restore()
	ctx := testenv.Context(t)
	for {
		a := h.token(pod)
		if a.status == http.StatusOK {
			break
		}
		wantCatchingUp(t, a)
		select {
		case <-ctx.Done():
			t.Fatal("never served after the API server was back")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if h.store.view.snapshot().current {
		t.Fatal("view current before the settle minute: the 200 proves nothing")
	}
	if n := testutil.ToFloat64(confirmed); n < 1 {
		t.Errorf("served while catching up with %v confirmations, want at least 1", n)
	}
}

// confirmGrant compares what the API server has now with the store's copies, by UID and
// resourceVersion, for the pod, each binding and the identity.
func TestConfirmComparesResourceVersions(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"x"}})
	pod, id, b := boundPod(t, h)
	h.store.view.interrupted("Pod", nil) // the view is not current from here on (settle: 2 s)
	ctx := testenv.Context(t)
	h.store.mu.RLock()
	pi := *h.store.podsByKey[pod.Namespace+"/"+pod.Name]
	sb := *h.store.bindings[b.Namespace+"/"+b.Name]
	si := *h.store.identities[id.Namespace+"/"+id.Name]
	h.store.mu.RUnlock()
	grantOf := func(p podInfo, b aadv1.AzureIdentityBinding, id aadv1.AzureIdentity) *grant {
		return &grant{id: &id, bindings: []*aadv1.AzureIdentityBinding{&b}, pod: &p}
	}
	if err := h.srv.confirmGrant(ctx, viewCheck{}, grantOf(pi, sb, si)); err != nil {
		t.Fatalf("unchanged grant not confirmed: %v", err)
	}
	stalePod, staleUID, staleBinding, staleID := pi, pi, sb, si
	stalePod.ResourceVersion = "1"
	staleUID.UID = "other"
	staleBinding.ResourceVersion = "1"
	staleID.ResourceVersion = "1"
	for name, g := range map[string]*grant{
		"pod resourceVersion":     grantOf(stalePod, sb, si),
		"pod UID":                 grantOf(staleUID, sb, si),
		"binding resourceVersion": grantOf(pi, staleBinding, si),
		"identity":                grantOf(pi, sb, staleID),
	} {
		err := h.srv.confirmGrant(ctx, viewCheck{}, g)
		if !errors.Is(err, ErrViewNotCurrent) {
			t.Errorf("%s differs: confirmGrant = %v, want ErrViewNotCurrent", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "Pod") || !strings.Contains(err.Error(), h.node) {
			t.Errorf("%s: message does not name the kind and node: %v", name, err)
		}
	}
}

// An AzurePodIdentityException deleted while NMI is cut off no longer gives its pod IMDS
// passthrough (every identity on the VM).
func TestStaleViewHonoursExceptionDelete(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"node-id"}, apiProxy: true, cfg: func(c *Config) { c.MICNamespace = "" }})
	info, _ := h.emu.Identity("node-id")
	if err := h.emu.AssignIdentity(h.vm, info.ID); err != nil {
		t.Fatal(err)
	}
	exc := &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "exc"},
		Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}}}
	env.Create(t, exc)
	agent := h.pod("agent", "", map[string]string{"app": "agent"})
	h.waitStore("exception", func(s *Store) bool { return len(s.exceptions[h.ns]) == 1 })
	wantStatus(t, h.token(agent, "client_id", info.ClientID), http.StatusOK)
	h.cut()
	if err := env.Client.Delete(testenv.Context(t), exc); err != nil {
		t.Fatal(err)
	}
	wantCatchingUp(t, h.token(agent, "client_id", info.ClientID))
	wantStatus(t, h.untilRefused(agent.Status.PodIP), http.StatusForbidden)
}
