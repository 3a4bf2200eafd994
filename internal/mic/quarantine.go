package mic

import (
	"sync"
	"time"

	"github.com/podidentity/podidentity/internal/cloud"
)

// quarantine holds (resource, identity) pairs ARM refused, with exponential backoff, so that one
// bad identity never delays valid ones on the same VM/VMSS and is not retried on every event.
type quarantine struct {
	mu        sync.Mutex
	base, max time.Duration
	now       func() time.Time
	m         map[heldKey]*held
}

// heldKey is one identity on one VM/VMSS.
type heldKey struct {
	resource cloud.ResourceKey
	identity string
}

type held struct {
	until    time.Time
	failures int
	reason   string
}

func newQuarantine(base, max time.Duration) *quarantine {
	return &quarantine{base: base, max: max, now: time.Now, m: map[heldKey]*held{}}
}

// hold quarantines id on resource after a failure and returns until when.
func (q *quarantine) hold(resource cloud.ResourceKey, id, reason string) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	h := q.m[heldKey{resource, id}]
	if h == nil {
		h = &held{}
		q.m[heldKey{resource, id}] = h
	}
	d := q.base << min(h.failures, 20)
	if d > q.max || d <= 0 {
		d = q.max
	}
	h.failures++
	h.until = q.now().Add(d)
	h.reason = reason
	return h.until
}

// held reports whether id is quarantined on resource now, and why.
func (q *quarantine) held(resource cloud.ResourceKey, id string) (bool, string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	h := q.m[heldKey{resource, id}]
	if h == nil || !q.now().Before(h.until) {
		return false, ""
	}
	return true, h.reason
}

// reason returns the last failure of a pair still on record (held or on probation).
func (q *quarantine) reason(resource cloud.ResourceKey, id string) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if h := q.m[heldKey{resource, id}]; h != nil {
		return h.reason
	}
	return ""
}

// release forgets a pair after it was assigned.
func (q *quarantine) release(resource cloud.ResourceKey, id string) {
	q.mu.Lock()
	delete(q.m, heldKey{resource, id})
	q.mu.Unlock()
}

// size counts pairs currently held.
func (q *quarantine) size() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, h := range q.m {
		if q.now().Before(h.until) {
			n++
		}
	}
	return n
}

// untilOf returns when a held pair is released.
func (q *quarantine) untilOf(resource cloud.ResourceKey, id string) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if h := q.m[heldKey{resource, id}]; h != nil {
		return h.until
	}
	return time.Time{}
}
