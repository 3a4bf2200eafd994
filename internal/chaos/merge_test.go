package chaos

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// The checker's two sources, as cmd/chaos feeds them: every applied change is observed at the
// time it was applied (watch event or write answer).
type feed struct {
	w  *World
	tl *Timeline
	t0 time.Time
}

func newFeed() *feed {
	w := testWorld()
	// testWorld sets its maps directly; give its bindings and identities versions as a watch would.
	for _, b := range w.Bindings {
		w.ApplyBinding(b, 1, false)
	}
	for _, id := range w.Identities {
		w.ApplyIdentity(id, 1, false)
	}
	return &feed{w: w, tl: NewTimeline(), t0: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (f *feed) at(s int) time.Time { return f.t0.Add(time.Duration(s) * time.Second) }

func (f *feed) pod(s int, p Pod, rv int64) bool {
	if !f.w.ApplyPod(p, rv, false) {
		return false
	}
	f.tl.Observe(f.at(s), f.w)
	return true
}

func (f *feed) binding(s int, b Binding, rv int64, deleted bool) bool {
	if !f.w.ApplyBinding(b, rv, deleted) {
		return false
	}
	f.tl.Observe(f.at(s), f.w)
	return true
}

func (f *feed) token(pk types.NamespacedName, s int) *Violation {
	return f.tl.CheckToken(Token{Pod: pk, ClientID: "cid-1", Start: f.at(s), End: f.at(s)}, DefaultGrace)
}

var mergePod = types.NamespacedName{Namespace: "b", Name: "p"}

// The relabel write is answered at +10s; the watch, blind after an apiserver restart, delivers
// the same state at +40s. The interval opens at the write.
func TestWriteSeenBeforeTheWatchOpensTheIntervalAtTheWrite(t *testing.T) {
	f := newFeed()
	f.pod(0, Pod{Key: mergePod, Selector: "none", Running: true, Changed: f.at(0)}, 100)
	bound := Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(10)}
	f.pod(10, bound, 110) // the write's answer
	if f.pod(40, bound, 110) {
		t.Error("the watch's copy of the written state was applied again")
	}
	iv := f.tl.Intervals(mergePod, "cid-1")
	if len(iv) != 1 || !iv[0].From.Equal(f.at(10)) || !iv[0].To.IsZero() {
		t.Fatalf("intervals %v, want one open from +10s", iv)
	}
	if v := f.token(mergePod, 15); v != nil {
		t.Errorf("token 5s after the relabel write, before the watch saw it, flagged: %v", v)
	}
}

// A pod relabelled to a bound selector and back while the watch is blind: a relist delivers
// only the final state (compressed history), yet the interval of the writes is there.
func TestBoundAndUnboundWhileTheWatchWasBlindKeepsTheInterval(t *testing.T) {
	f := newFeed()
	unbound := Pod{Key: mergePod, Selector: "none", Running: true, Changed: f.at(0)}
	f.pod(0, unbound, 100)
	f.pod(10, Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(10)}, 110) // write
	back := Pod{Key: mergePod, Selector: "none", Running: true, Changed: f.at(30)}
	f.pod(30, back, 120) // write
	f.pod(50, back, 120) // the relist
	iv := f.tl.Intervals(mergePod, "cid-1")
	if len(iv) != 1 || !iv[0].From.Equal(f.at(10)) || !iv[0].To.Equal(f.at(30)) {
		t.Fatalf("intervals %v, want [+10s, +30s]", iv)
	}
	if v := f.token(mergePod, 20); v != nil {
		t.Errorf("token while bound by the writes flagged: %v", v)
	}
	if v := f.token(mergePod, 40); v == nil {
		t.Error("token 10s after the relabel back not flagged")
	}
}

// The 30-minute run's case: a binding deleted and re-created while the watch was blind. The
// relist shows the new binding only (created at +49s); the pod was bound by the old one until its
// deletion at +40s.
func TestBindingRecreatedWhileTheWatchWasBlind(t *testing.T) {
	f := newFeed()
	f.pod(0, Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(0)}, 100)
	old := f.w.Bindings[types.NamespacedName{Namespace: "a", Name: "b1"}]
	f.binding(40, old, 1, true) // the delete write (precondition: the state read, rv 1)
	recreated := old
	recreated.Changed = f.at(49)
	f.binding(49, recreated, 130, false) // the create write
	f.binding(60, recreated, 130, false) // the relist
	iv := f.tl.Intervals(mergePod, "cid-1")
	if len(iv) != 2 || !iv[0].From.Equal(f.at(0)) || !iv[0].To.Equal(f.at(40)) || !iv[1].From.Equal(f.at(49)) {
		t.Fatalf("intervals %v, want [0, +40s] and [+49s, open)", iv)
	}
	if v := f.token(mergePod, 30); v != nil {
		t.Errorf("token under the old binding flagged: %v", v)
	}
	if v := f.token(mergePod, 45); v == nil {
		t.Error("token between the delete and the re-create not flagged")
	}
}

// Stale watch events (older resourceVersions than a write already applied) neither reopen nor
// close an interval; a relist that finds an object gone (its last known state) does not undo a
// newer write either.
func TestStaleWatchEventAfterANewerWriteChangesNothing(t *testing.T) {
	f := newFeed()
	boundOld := Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(0)}
	f.pod(0, boundOld, 100)
	f.pod(10, Pod{Key: mergePod, Selector: "none", Running: true, Changed: f.at(10)}, 110) // unbinding write
	if f.pod(20, boundOld, 100) {
		t.Error("stale bound state (rv 100) applied after the write (rv 110)")
	}
	if v := f.token(mergePod, 25); v == nil {
		t.Error("token 15s after the unbinding write not flagged: the stale event reopened the interval")
	}
	f.pod(30, Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(30)}, 120) // binding write
	if f.pod(35, Pod{Key: mergePod, Selector: "none", Running: true, Changed: f.at(10)}, 110) {
		t.Error("stale unbound state (rv 110) applied after the write (rv 120)")
	}
	if f.w.ApplyPod(Pod{Key: mergePod}, 110, true) {
		t.Error("a relist's deletion of the last watched state (rv 110) undid the newer write (rv 120)")
	}
	if v := f.token(mergePod, 45); v != nil {
		t.Errorf("token while bound by the newest write flagged: %v", v)
	}
	if iv := f.tl.Intervals(mergePod, "cid-1"); len(iv) != 2 {
		t.Errorf("intervals %v, want two", iv)
	}
	// The real deletion (a newer resourceVersion) is applied; a stale event cannot bring it back.
	if !f.w.ApplyPod(Pod{Key: mergePod}, 130, true) {
		t.Error("the deletion at rv 130 was not applied")
	}
	if f.w.ApplyPod(boundOld, 120, false) || len(f.w.Pods) != 0 {
		t.Error("a state older than the deletion brought the pod back")
	}
}

// An identity's client ID switched to another Azure identity and back (the pod and its binding
// unchanged): each client ID is allowed only while the identity has it.
func TestIdentitySwitchedAndBackChangesTheBoundClientID(t *testing.T) {
	f := newFeed()
	f.pod(0, Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(0)}, 100)
	idk := types.NamespacedName{Namespace: "a", Name: "id1"}
	orig := f.w.Identities[idk]
	alt := orig
	alt.ClientID, alt.ResourceID, alt.Changed = "CID-ALT", "/x/alt", f.at(10)
	apply := func(s int, id Identity, rv int64) {
		if f.w.ApplyIdentity(id, rv, false) {
			f.tl.Observe(f.at(s), f.w)
		}
	}
	apply(10, alt, 110)
	back := orig
	back.Changed = f.at(30)
	apply(30, back, 120)
	apply(40, alt, 110) // a stale watch event
	tok := func(cid string, s int) *Violation {
		return f.tl.CheckToken(Token{Pod: mergePod, ClientID: cid, Start: f.at(s), End: f.at(s)}, DefaultGrace)
	}
	for _, c := range []struct {
		cid  string
		at   int
		flag bool
	}{{"cid-1", 5, false}, {"cid-1", 20, true}, {"cid-alt", 20, false}, {"cid-alt", 5, true}, {"cid-alt", 45, true}, {"cid-1", 45, false}} {
		if v := tok(c.cid, c.at); (v != nil) != c.flag {
			t.Errorf("token of %s at +%ds: violation %v, want flagged %t", c.cid, c.at, v, c.flag)
		}
	}
	if need := Needed(f.w, map[string]string{"": "vm"}); !need["vm"]["/x/id1"] || need["vm"]["/x/alt"] {
		t.Errorf("needed after switching back = %v, want /x/id1 only", need)
	}
}

// The namespaced annotation toggled on an identity: a pod in another namespace is bound only
// while it is off.
func TestNamespacedToggleUnbindsTheOtherNamespace(t *testing.T) {
	f := newFeed()
	f.pod(0, Pod{Key: mergePod, Selector: "s1", Running: true, Changed: f.at(0)}, 100) // namespace b, binding in a
	idk := types.NamespacedName{Namespace: "a", Name: "id1"}
	ns := f.w.Identities[idk]
	ns.Namespaced, ns.Changed = true, f.at(10)
	if f.w.ApplyIdentity(ns, 110, false) {
		f.tl.Observe(f.at(10), f.w)
	}
	if v := f.token(mergePod, 5); v != nil {
		t.Errorf("token before the toggle flagged: %v", v)
	}
	if v := f.token(mergePod, 20); v == nil {
		t.Error("token to a pod of another namespace after the identity became namespaced not flagged")
	}
}

// A completed pod (a Job's) is not owed tokens; a running one is.
func TestCompletedPodIsNotOwedATokenButAJobPodRunningIs(t *testing.T) {
	w := testWorld()
	pk := types.NamespacedName{Namespace: "a", Name: "job-1-x"}
	now := time.Now()
	since := map[types.NamespacedName]time.Time{pk: now.Add(-time.Minute)}
	w.Pods[pk] = Pod{Key: pk, Selector: "s1", Node: "n1", Running: false}
	if v := CheckFreshTokens(w, since, nil, now, 30*time.Second); len(v) != 0 {
		t.Errorf("completed pod flagged: %v", v)
	}
	w.Pods[pk] = Pod{Key: pk, Selector: "s1", Node: "n1", Running: true}
	if v := CheckFreshTokens(w, since, nil, now, 30*time.Second); len(v) != 1 {
		t.Errorf("running bound Job pod without a token not flagged: %v", v)
	}
}

// A pod relabelled by a write (rv 120) and then deleted while the checker's watch was blind: the
// relist reports it gone with its last watched state (rv 100, same UID). That incarnation is gone
// however old the report: the checker must not keep a zombie pod it would expect tokens and VM
// identities for (the 1-hour soak's false "missing" and "no token" reports).
func TestRelistDeletionOfTheSameIncarnationIsApplied(t *testing.T) {
	w := NewWorld(false)
	p := Pod{Key: mergePod, UID: "u1", Selector: "s1", Running: true}
	w.ApplyPod(p, 100, false)
	p.Selector = "s2"
	w.ApplyPod(p, 120, false) // the workload's relabel, from its write's answer
	if !w.ApplyPod(Pod{Key: mergePod, UID: "u1"}, 100, true) || len(w.Pods) != 0 {
		t.Fatal("the relist's deletion of the same incarnation (UID u1) was not applied: a zombie pod stays in the checker's world")
	}
	if w.ApplyPod(p, 120, false) || len(w.Pods) != 0 {
		t.Error("a state of the deleted incarnation (rv 120) brought it back")
	}
	// A re-created object of the same name is a new incarnation: a late deletion of the old one
	// must not remove it.
	b := Binding{Key: types.NamespacedName{Namespace: "a", Name: "b1"}, UID: "old", Selector: "s1"}
	w.ApplyBinding(b, 200, false)
	w.ApplyBinding(b, 210, true)
	b.UID = "new"
	w.ApplyBinding(b, 220, false)
	if w.ApplyBinding(Binding{Key: b.Key, UID: "old"}, 200, true) || len(w.Bindings) != 1 {
		t.Error("a late deletion of the old incarnation removed the re-created binding")
	}
}
