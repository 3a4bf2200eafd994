package mic

import (
	"sync"
	"time"
)

// requeue collects when one reconcile wants its VM/VMSS back: the soonest of all the reasons.
type requeue struct {
	mu sync.Mutex
	d  time.Duration
}

// after asks for the resource again in d (ignored unless positive).
func (r *requeue) after(d time.Duration) {
	r.mu.Lock()
	if d > 0 && (r.d == 0 || d < r.d) {
		r.d = d
	}
	r.mu.Unlock()
}

func (r *requeue) get() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.d
}
