package chaos

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// DefaultGrace is the watch-propagation allowance: a token counts as allowed when the pod was
// bound to its identity at some moment within Grace before the request started or after it was
// answered. It covers the time NMI's informers (and the checker's own watch) take to see a
// binding, label or pod change: an unbind, relabel or delete is honoured within it.
const DefaultGrace = 2 * time.Second

// Interval is a span in which a pod was bound to an identity; a zero To means "still bound".
type Interval struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to,omitempty"`
}

type boundKey struct {
	Pod      types.NamespacedName
	ClientID string // lower case
}

// Timeline records, for every (pod, identity), when the pod was bound to it, as the checker's
// watch saw the world change. It is safe for concurrent use.
type Timeline struct {
	mu    sync.Mutex
	open  map[boundKey]time.Time
	spans map[boundKey][]Interval
}

// NewTimeline returns an empty timeline.
func NewTimeline() *Timeline {
	return &Timeline{open: map[boundKey]time.Time{}, spans: map[boundKey][]Interval{}}
}

// Observe records the bindings of every pod in w at time at: pairs bound now and not before
// open an interval; pairs bound before and not now (or whose pod is gone) close theirs.
//
// An interval opens at the apiserver's record of the change that bound the pair when that is
// earlier than at (the checker's own watch may lag, e.g. while it reconnects after an apiserver
// restart; NMI's may not), and closes at at: a late-seen unbind can only hide a violation
// (lenient), never invent one.
func (t *Timeline) Observe(at time.Time, w *World) {
	now := map[boundKey]time.Time{}
	for _, p := range w.Pods {
		for cid, b := range w.bound(p) {
			from := at
			if !b.since.IsZero() && b.since.Before(at) {
				from = b.since
			}
			now[boundKey{Pod: p.Key, ClientID: cid}] = from
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, from := range now {
		if _, ok := t.open[k]; !ok {
			// Never before the end of this pair's previous interval: intervals stay ordered.
			if prev := t.spans[k]; len(prev) > 0 && from.Before(prev[len(prev)-1].To) {
				from = prev[len(prev)-1].To
			}
			t.open[k] = from
		}
	}
	for k, from := range t.open {
		if _, ok := now[k]; !ok {
			t.spans[k] = append(t.spans[k], Interval{From: from, To: at})
			delete(t.open, k)
		}
	}
}

// Intervals returns the pod's intervals for the identity, the open one last.
func (t *Timeline) Intervals(pod types.NamespacedName, clientID string) []Interval {
	k := boundKey{Pod: pod, ClientID: strings.ToLower(clientID)}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]Interval(nil), t.spans[k]...)
	if from, ok := t.open[k]; ok {
		out = append(out, Interval{From: from})
	}
	return out
}

// Token is one token a pod received, as its probe client reported it.
type Token struct {
	Pod      types.NamespacedName `json:"pod"`
	Node     string               `json:"node"`
	ClientID string               `json:"clientID"`
	// Start is when the first request was sent, End when the token came back.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Violation is a broken invariant.
type Violation struct {
	Rule   string `json:"rule"`
	Detail string `json:"detail"`
}

// Rule names of violations.
const (
	RuleUnboundToken = "token-for-unbound-identity"
	RuleLeaked       = "identity-leaked-on-vm"
	RuleMissing      = "identity-missing-on-vm"
	RuleStuck        = "assigned-identity-stuck"
	RuleNoToken      = "bound-pod-without-token"
)

// CheckToken returns a violation when the pod was not bound to the token's identity at any
// moment of [Start-grace, End+grace].
func (t *Timeline) CheckToken(tok Token, grace time.Duration) *Violation {
	lo, hi := tok.Start.Add(-grace), tok.End.Add(grace)
	for _, iv := range t.Intervals(tok.Pod, tok.ClientID) {
		if !iv.From.After(hi) && (iv.To.IsZero() || !iv.To.Before(lo)) {
			return nil
		}
	}
	return &Violation{Rule: RuleUnboundToken, Detail: fmt.Sprintf(
		"pod %s on %s got a token of client ID %s (requested %s, answered %s) but was not bound to it within %s of that",
		tok.Pod, tok.Node, tok.ClientID, tok.Start.Format(time.RFC3339Nano), tok.End.Format(time.RFC3339Nano), grace)}
}
