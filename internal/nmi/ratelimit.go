package nmi

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// podLimiter is a token bucket per pod for requests that reach Azure.
type podLimiter struct {
	r     rate.Limit
	burst int
	mu    sync.Mutex
	m     map[types.UID]*rate.Limiter
}

func newPodLimiter(perSecond float64, burst int) *podLimiter {
	return &podLimiter{r: rate.Limit(perSecond), burst: burst, m: map[types.UID]*rate.Limiter{}}
}

func (l *podLimiter) allow(p *podInfo) error {
	if l.r <= 0 {
		return nil
	}
	l.mu.Lock()
	lim := l.m[p.UID]
	if lim == nil {
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[p.UID] = lim
	}
	l.mu.Unlock()
	now := time.Now()
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return &rateLimitError{pod: p.key(), wait: d}
	}
	return nil
}

func (l *podLimiter) forget(uid types.UID) {
	l.mu.Lock()
	delete(l.m, uid)
	l.mu.Unlock()
}
