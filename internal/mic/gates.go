package mic

import (
	"sync"
	"time"
)

// callKind is the kind of ARM call a throttling gate holds back.
type callKind string

const (
	callRead  callKind = "read"
	callWrite callKind = "write"
)

type gateKey struct {
	subscription string
	kind         callKind
}

// gates honour ARM's Retry-After per subscription and call kind: while a gate is closed, calls
// of its kind are not made (the resource is requeued for when it opens).
type gates struct {
	mu  sync.Mutex
	m   map[gateKey]time.Time
	now func() time.Time
}

// defaultRetryAfter is the pause when a 429 names no Retry-After.
const defaultRetryAfter = 10 * time.Second

func newGates() *gates { return &gates{m: map[gateKey]time.Time{}, now: time.Now} }

// closed returns how long calls of kind on sub must still wait (0: go ahead).
func (g *gates) closed(sub string, kind callKind) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := gateKey{sub, kind}
	if until, ok := g.m[k]; ok {
		if d := until.Sub(g.now()); d > 0 {
			return d
		}
		delete(g.m, k)
	}
	return 0
}

// close holds calls of kind on sub back for retryAfter and returns the pause.
func (g *gates) close(sub string, kind callKind, retryAfter time.Duration) time.Duration {
	if retryAfter <= 0 {
		retryAfter = defaultRetryAfter
	}
	g.mu.Lock()
	g.m[gateKey{sub, kind}] = g.now().Add(retryAfter)
	g.mu.Unlock()
	return retryAfter
}
