package chaos

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestScheduleReproducibleFromSeed(t *testing.T) {
	a, err := NewSchedule(42, 3*time.Minute, 6)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewSchedule(42, 3*time.Minute, 6)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	c, _ := NewSchedule(43, 3*time.Minute, 6)
	if reflect.DeepEqual(a, c) {
		t.Errorf("seeds 42 and 43 gave the same schedule %v", a)
	}
	if len(a) < 10 {
		t.Errorf("6/minute for 3m gave only %d faults", len(a))
	}
	var emuEnd time.Duration
	for i, f := range a {
		if f.At < 18*time.Second || f.At >= 144*time.Second {
			t.Errorf("fault %v outside the fault phase [18s, 144s)", f)
		}
		if i > 0 && f.At < a[i-1].At {
			t.Errorf("schedule not sorted at %d: %v", i, a)
		}
		if f.Kind.Exclusive() {
			if f.At < emuEnd {
				t.Errorf("exclusive window %v overlaps the previous one (ends %s)", f, emuEnd)
			}
			emuEnd = f.At + f.For
		}
	}
}

func TestScheduleRejectsBadInput(t *testing.T) {
	var se *ScheduleError
	if _, err := NewSchedule(1, time.Second, 1); !errors.As(err, &se) || !strings.Contains(err.Error(), "at least 10s") {
		t.Errorf("short duration: %v", err)
	}
	if _, err := NewSchedule(1, time.Minute, 100); !errors.As(err, &se) || !strings.Contains(err.Error(), "use 0.5..30") {
		t.Errorf("intensity 100: %v", err)
	}
}

// A world with one label binding in ns a, one ServiceAccount binding and a namespaced identity.
func testWorld() *World {
	w := NewWorld(false)
	nn := func(ns, n string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: n} }
	w.Identities[nn("a", "id1")] = Identity{Key: nn("a", "id1"), ClientID: "CID-1", ResourceID: "/x/id1"}
	w.Identities[nn("a", "id2")] = Identity{Key: nn("a", "id2"), ClientID: "cid-2", ResourceID: "/x/id2", Namespaced: true}
	w.Identities[nn("a", "fed")] = Identity{Key: nn("a", "fed"), ClientID: "cid-f", ResourceID: "/x/fed", Federated: true}
	w.Bindings[nn("a", "b1")] = Binding{Key: nn("a", "b1"), Identity: "id1", Selector: "s1"}
	w.Bindings[nn("a", "b2")] = Binding{Key: nn("a", "b2"), Identity: "id2", Selector: "s2"}
	w.Bindings[nn("a", "bf")] = Binding{Key: nn("a", "bf"), Identity: "fed", ServiceAccount: "sa"}
	return w
}

func TestBindingRules(t *testing.T) {
	w := testWorld()
	cases := []struct {
		pod  Pod
		want []string
	}{
		{Pod{Key: types.NamespacedName{Namespace: "b", Name: "p"}, Selector: "s1", ServiceAccount: "sa"}, []string{"cid-1"}}, // cross-namespace label
		{Pod{Key: types.NamespacedName{Namespace: "b", Name: "p"}, Selector: "s2"}, nil},                                     // namespaced identity
		{Pod{Key: types.NamespacedName{Namespace: "a", Name: "p"}, Selector: "s2", ServiceAccount: "sa"}, []string{"cid-2", "cid-f"}},
		{Pod{Key: types.NamespacedName{Namespace: "a", Name: "p"}, Selector: "other", ServiceAccount: "default"}, nil},
	}
	for _, c := range cases {
		got := Set{}
		for k := range w.Bound(c.pod) {
			got.Add(k)
		}
		if want := strings.Join(c.want, ","); strings.Join(got.Sorted(), ",") != want {
			t.Errorf("%+v: bound to %v, want %s", c.pod, got.Sorted(), want)
		}
	}
	w.ForceNamespaced = true
	if got := w.Bound(cases[0].pod); len(got) != 0 {
		t.Errorf("forceNamespaced: cross-namespace pod bound to %v", got)
	}
}

func TestCheckerFlagsUnboundTokenAndAcceptsGrace(t *testing.T) {
	w := testWorld()
	pk := types.NamespacedName{Namespace: "b", Name: "p"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tl := NewTimeline()
	w.Pods[pk] = Pod{Key: pk, Selector: "s1", Running: true}
	tl.Observe(t0, w)
	// Relabelled away at t0+10s.
	w.Pods[pk] = Pod{Key: pk, Selector: "gone", Running: true}
	tl.Observe(t0.Add(10*time.Second), w)

	tok := func(start, end time.Duration, cid string) Token {
		return Token{Pod: pk, Node: "n", ClientID: cid, Start: t0.Add(start), End: t0.Add(end)}
	}
	if v := tl.CheckToken(tok(5*time.Second, 6*time.Second, "CID-1"), DefaultGrace); v != nil {
		t.Errorf("token while bound flagged: %v", v)
	}
	if v := tl.CheckToken(tok(11*time.Second, 11500*time.Millisecond, "cid-1"), DefaultGrace); v != nil {
		t.Errorf("token 1s after the relabel (inside the %s grace) flagged: %v", DefaultGrace, v)
	}
	v := tl.CheckToken(tok(15*time.Second, 16*time.Second, "cid-1"), DefaultGrace)
	if v == nil || v.Rule != RuleUnboundToken || !strings.Contains(v.Detail, "b/p") {
		t.Errorf("token 5s after the relabel not flagged: %v", v)
	}
	if v := tl.CheckToken(tok(5*time.Second, 6*time.Second, "cid-2"), DefaultGrace); v == nil {
		t.Error("token of an identity never bound not flagged")
	}
	// Pod deleted: its interval closes.
	w.Pods[pk] = Pod{Key: pk, Selector: "s1", Running: true}
	tl.Observe(t0.Add(20*time.Second), w)
	delete(w.Pods, pk)
	tl.Observe(t0.Add(30*time.Second), w)
	if v := tl.CheckToken(tok(40*time.Second, 41*time.Second, "cid-1"), DefaultGrace); v == nil {
		t.Error("token 10s after the pod was deleted not flagged")
	}
	if n := len(tl.Intervals(pk, "cid-1")); n != 2 {
		t.Errorf("intervals = %d, want 2", n)
	}
}

func TestFinalChecks(t *testing.T) {
	w := testWorld()
	pa := types.NamespacedName{Namespace: "a", Name: "pa"}
	w.Pods[pa] = Pod{Key: pa, Selector: "s1", ServiceAccount: "sa", Node: "n1", Running: true}
	need := Needed(w, map[string]string{"n1": "vmss"})
	if got := need["vmss"].Sorted(); len(got) != 1 || got[0] != "/x/id1" {
		t.Fatalf("needed = %v, want only /x/id1 (federated is never needed)", got)
	}
	have := map[string]Set{"vmss": {"/x/id1": true, "/x/old": true, "/x/leak": true}, "vm": {"/x/fed": true}}
	untouched := map[string]Set{"vmss": {"/x/old": true}}
	leaked, missing := CheckVMs(have, need, untouched)
	if len(leaked) != 2 || len(missing) != 0 || !strings.Contains(leaked[0].Detail, "/x/fed") || !strings.Contains(leaked[1].Detail, "/x/leak") {
		t.Errorf("leaked %v missing %v", leaked, missing)
	}
	exists := func(k types.NamespacedName) bool { return k == pa }
	stuck := StuckAssignments([]AssignedIdentity{
		{Key: types.NamespacedName{Name: "ok"}, Pod: pa, Status: "Assigned"},
		{Key: types.NamespacedName{Name: "explained"}, Pod: pa, Status: "Created", Explained: true},
		{Key: types.NamespacedName{Name: "created"}, Pod: pa, Status: "Created"},
		{Key: types.NamespacedName{Name: "orphan"}, Pod: types.NamespacedName{Namespace: "a", Name: "gone"}, Status: "Assigned", Finalizers: []string{"f"}},
	}, exists)
	if len(stuck) != 2 || !strings.Contains(stuck[0].Detail, "created") || !strings.Contains(stuck[1].Detail, "no longer exists") {
		t.Errorf("stuck = %v", stuck)
	}
	now := time.Now()
	since := map[types.NamespacedName]time.Time{pa: now.Add(-time.Minute)}
	if v := CheckFreshTokens(w, since, map[types.NamespacedName]time.Time{pa: now.Add(-5 * time.Second)}, now, 30*time.Second); len(v) != 0 {
		t.Errorf("fresh token flagged: %v", v)
	}
	if v := CheckFreshTokens(w, since, nil, now, 30*time.Second); len(v) != 1 || v[0].Rule != RuleNoToken {
		t.Errorf("pod without token not flagged: %v", v)
	}
	// A pod naming an identity it is not bound to is not owed a token.
	w.Pods[pa] = Pod{Key: pa, Selector: "s1", Node: "n1", Running: true, Requested: "cid-2"}
	if v := CheckFreshTokens(w, since, nil, now, 30*time.Second); len(v) != 0 {
		t.Errorf("pod asking for an identity it is not bound to flagged: %v", v)
	}
	w.Pods[pa] = Pod{Key: pa, Selector: "s1", Node: "n1", Running: true, Requested: "CID-1"}
	if v := CheckFreshTokens(w, since, nil, now, 30*time.Second); len(v) != 1 {
		t.Errorf("pod naming its bound identity without a token not flagged: %v", v)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	fs, _ := NewSchedule(7, time.Minute, 5)
	r := &Report{Seed: 7, Started: time.Date(2026, 12, 1, 14, 0, 0, 0, time.UTC), Duration: Duration(time.Minute), Intensity: 5,
		Grace: Duration(DefaultGrace), Faults: fs, FaultsByKind: CountByKind(fs), Workload: map[string]int{"pod-create": 3},
		Requests: 10, Tokens: 8, Violations: []Violation{{Rule: RuleUnboundToken, Detail: "x"}},
		Recovery: Summarise([]time.Duration{time.Second, 3 * time.Second, 2 * time.Second}), ARMPerMinChaos: 12.5,
		Memory: []MemSample{{At: Duration(10 * time.Second), MICMiB: 40, NMIMiB: 30}, {At: Duration(20 * time.Second), MICMiB: 44, NMIMiB: 29}}}
	r.Finish()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("round trip changed the report:\n got %+v\nwant %+v", got, r)
	}
	if r.InvariantsHeld || r.Recovery.P50 != Duration(2*time.Second) || r.Recovery.Max != Duration(3*time.Second) {
		t.Errorf("finish/percentiles wrong: %+v", r)
	}
	var txt bytes.Buffer
	r.WriteText(&txt)
	if !strings.Contains(txt.String(), "violations (must be 0): 1") || !strings.Contains(txt.String(), "CHAOS_SEED=7") ||
		!strings.Contains(txt.String(), "MIC first 40.0, last 44.0, max 44.0 MiB") {
		t.Errorf("text report:\n%s", txt.String())
	}
	if _, err := ReadJSON(strings.NewReader(`{"duration": 5}`)); err == nil || !strings.Contains(err.Error(), "1m30s") {
		t.Errorf("bad duration: %v", err)
	}
}

func TestPlotSVG(t *testing.T) {
	r := &Report{Seed: 3, Duration: Duration(time.Minute), Intensity: 2,
		RecoveryPoints: []Recovery{{At: Duration(10 * time.Second), Kind: MICKill, Took: Duration(4 * time.Second)}},
		Memory:         []MemSample{{At: Duration(0), MICMiB: 40, NMIMiB: 30}, {At: Duration(time.Minute), MICMiB: 42, NMIMiB: 31}}}
	svg := string(PlotSVG(r))
	for _, want := range []string{"<svg ", "<circle cx=\"153.3\"", "mic-leader-sigkill +10s: 4s", "<polyline", "</svg>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q:\n%s", want, svg)
		}
	}
}

// The checker's watch may see a change late (reconnecting after an apiserver restart): the
// interval opens at the apiserver's record of the change, not at the late observation.
func TestLateObservationUsesTheApiserversTime(t *testing.T) {
	w := testWorld()
	pk := types.NamespacedName{Namespace: "b", Name: "p"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tl := NewTimeline()
	w.Pods[pk] = Pod{Key: pk, Selector: "none", Running: true, Changed: t0.Add(-time.Minute)}
	tl.Observe(t0, w)
	w.Pods[pk] = Pod{Key: pk, Selector: "s1", Running: true, Changed: t0.Add(10 * time.Second)} // relabelled at +10s
	tl.Observe(t0.Add(20*time.Second), w)                                                       // seen at +20s
	tok := Token{Pod: pk, ClientID: "cid-1", Start: t0.Add(12 * time.Second), End: t0.Add(12 * time.Second)}
	if v := tl.CheckToken(tok, DefaultGrace); v != nil {
		t.Errorf("token after the relabel, before the late observation, flagged: %v", v)
	}
	tok.Start, tok.End = t0.Add(5*time.Second), t0.Add(5*time.Second)
	if v := tl.CheckToken(tok, DefaultGrace); v == nil {
		t.Error("token 5s before the relabel not flagged")
	}
}
