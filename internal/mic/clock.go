package mic

import (
	"sync"
	"time"

	"github.com/podidentity/podidentity/internal/mic/desired"
)

// assignClock remembers when each desired (pod, identity) pair was first seen, for the
// assignment latency metric.
type assignClock struct {
	mu        sync.Mutex
	firstSeen map[desired.Key]time.Time
}

func newAssignClock() *assignClock { return &assignClock{firstSeen: map[desired.Key]time.Time{}} }

// observe starts the clock of new pairs and forgets pairs no longer desired.
func (c *assignClock) observe(aais map[desired.Key]*desired.AAI, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range aais {
		if _, ok := c.firstSeen[k]; !ok {
			c.firstSeen[k] = now
		}
	}
	for k := range c.firstSeen {
		if _, ok := aais[k]; !ok {
			delete(c.firstSeen, k)
		}
	}
}

// stop returns how long ago k was first seen and forgets it (ok=false: not timed).
func (c *assignClock) stop(k desired.Key) (time.Duration, bool) {
	c.mu.Lock()
	t, ok := c.firstSeen[k]
	delete(c.firstSeen, k)
	c.mu.Unlock()
	return time.Since(t), ok
}
