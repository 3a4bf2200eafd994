package nmi

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// EventSink records Kubernetes events (client-go's record.EventRecorder is one).
type EventSink interface {
	Event(object runtime.Object, eventtype, reason, message string)
}

const (
	// refusalInterval: a caller's repeated refusals of one kind are logged (and reported as
	// events) at most once per interval, with the number left out in between.
	refusalInterval = 10 * time.Second
	// refusalKeys bounds the memory of who was refused lately.
	refusalKeys = 4096
	// loggedPathMax caps the request path in a log line (paths may be up to 16 KB).
	loggedPathMax = 256
)

// refusals logs refused token requests and reports policy refusals as Warning events on the
// bindings involved, sampled per caller so that a pod in a retry loop cannot flood the log.
type refusals struct {
	log    logr.Logger
	events EventSink

	mu   sync.Mutex
	seen map[refusalKey]*refusalState
}

type refusalKey struct {
	caller string // pod namespace/name, or the remote address when no pod was found
	status int
}

type refusalState struct {
	last       time.Time
	suppressed int
}

func newRefusals(events EventSink, log logr.Logger) *refusals {
	return &refusals{log: log, events: events, seen: map[refusalKey]*refusalState{}}
}

// admit reports whether this refusal is to be logged now, and how many were left out since the
// last one that was.
func (f *refusals) admit(k refusalKey, now time.Time) (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.seen[k]
	if st == nil {
		if len(f.seen) >= refusalKeys {
			for old, s := range f.seen {
				if now.Sub(s.last) >= refusalInterval {
					delete(f.seen, old)
				}
			}
			if len(f.seen) >= refusalKeys {
				f.seen = map[refusalKey]*refusalState{} // a flood of callers: start over
			}
		}
		f.seen[k] = &refusalState{last: now}
		return true, 0
	}
	if now.Sub(st.last) < refusalInterval {
		st.suppressed++
		return false, 0
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	return true, n
}

// report logs one refusal (sampled) and, for refusals the identity's owner must fix, warns on
// the bindings that bound the identity.
func (f *refusals) report(r *http.Request, pod *podInfo, g *grant, status int, err error) {
	k := refusalKey{caller: r.RemoteAddr, status: status}
	if pod != nil {
		k.caller = pod.key()
	}
	ok, suppressed := f.admit(k, time.Now())
	if !ok {
		return
	}
	kv := []any{"status", status, "remote", r.RemoteAddr, "path", clipPath(r.URL.Path), "error", err.Error()}
	if pod != nil {
		kv = append(kv, "pod", pod.key())
	}
	if suppressed > 0 {
		kv = append(kv, "suppressedSinceLast", suppressed)
	}
	f.log.Info("token request refused", kv...)
	if f.events == nil || g == nil {
		return
	}
	reason := ""
	switch {
	case errors.Is(err, ErrIdentityMismatch):
		reason = "IdentityMismatch"
	case errors.Is(err, ErrRefused):
		reason = "IdentityRefused"
	case errors.Is(err, ErrNoFederatedCredential):
		reason = "FederatedCredentialMissing"
	default:
		return
	}
	msg := err.Error()
	if pod != nil {
		msg = "pod " + pod.key() + ": " + msg
	}
	if len(msg) > 1000 {
		msg = msg[:1000] + "…"
	}
	for _, b := range g.bindings {
		f.events.Event(b, corev1.EventTypeWarning, reason, msg)
	}
}

func clipPath(p string) string {
	if len(p) <= loggedPathMax {
		return p
	}
	return p[:loggedPathMax] + "…(" + strconv.Itoa(len(p)) + " bytes)"
}
