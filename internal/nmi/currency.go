package nmi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
)

// DefaultViewSettle is how long a re-established watch must have run before NMI trusts its view
// again: the API server sends the backlog since the last resourceVersion at once, so this is the
// documented propagation grace.
const DefaultViewSettle = 2 * time.Second

// viewKind names one informer NMI answers from, by its Kind (Pod, AzureIdentityBinding, ...).
type viewKind string

// kindView is the currency of one informer.
type kindView struct {
	interrupted bool      // a watch ended or a List/Watch failed, and no watch has settled since
	since       time.Time // start of this non-current window
	// established is when the latest successful Watch after the interruption started (zero:
	// none yet); settle fires settle after it.
	established time.Time
	settle      *time.Timer
}

// Currency knows whether NMI's informers see the cluster as it is now. While one does not (its
// watch was interrupted and has not run for the settle time since), grants are confirmed with
// fresh reads (confirm.go). Watch feeds it through the wrapped ListerWatchers; the hot path reads
// two atomics.
type Currency struct {
	mu     sync.Mutex
	settle time.Duration
	log    logr.Logger
	kinds  map[viewKind]*kindView
	// notCurrent counts kinds not current; gen grows at every interruption, so that a request
	// can tell whether one happened since it looked (snapshot, still).
	notCurrent atomic.Int32
	gen        atomic.Uint64
}

func newCurrency() *Currency {
	return &Currency{settle: DefaultViewSettle, log: logr.Discard(), kinds: map[viewKind]*kindView{}}
}

// configure sets the settle time and logger; Watch calls it before any informer starts.
func (c *Currency) configure(settle time.Duration, log logr.Logger) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if settle > 0 {
		c.settle = settle
	}
	c.log = log
}

// viewSnapshot is what a request saw of the currency when it started.
type viewSnapshot struct {
	gen     uint64
	current bool
}

func (c *Currency) snapshot() viewSnapshot {
	g := c.gen.Load()
	return viewSnapshot{gen: g, current: c.notCurrent.Load() == 0}
}

// still reports whether the view was current at v and has stayed so without interruption: then
// what the request decided from the store needs no confirmation.
func (c *Currency) still(v viewSnapshot) bool {
	return v.current && c.notCurrent.Load() == 0 && c.gen.Load() == v.gen
}

// interrupted records that kind's watch ended or its List/Watch failed.
func (c *Currency) interrupted(k viewKind, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kv := c.kindLocked(k)
	if !kv.interrupted {
		kv.interrupted, kv.since = true, time.Now()
		c.notCurrent.Add(1)
		c.log.V(1).Info("watch interrupted: grants are confirmed with the API server until it has run again for the settle time", "kind", string(k), "settle", c.settle, "reason", errText(err))
	}
	kv.established = time.Time{}
	if kv.settle != nil {
		kv.settle.Stop()
		kv.settle = nil
	}
	c.gen.Add(1)
}

// established records that a Watch of kind started; it is current settle later unless
// interrupted again.
func (c *Currency) established(k viewKind) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kv := c.kindLocked(k)
	if !kv.interrupted || kv.settle != nil {
		return
	}
	at := time.Now()
	kv.established = at
	kv.settle = time.AfterFunc(c.settle, func() { c.settled(k, at) })
}

func (c *Currency) settled(k viewKind, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kv := c.kindLocked(k)
	if !kv.interrupted || !kv.established.Equal(at) {
		return // interrupted again since
	}
	kv.interrupted, kv.settle = false, nil
	c.notCurrent.Add(-1)
	c.log.V(1).Info("watch current again", "kind", string(k), "notCurrentFor", time.Since(kv.since).Round(time.Millisecond))
}

func (c *Currency) kindLocked(k viewKind) *kindView {
	kv := c.kinds[k]
	if kv == nil {
		kv = &kindView{}
		c.kinds[k] = kv
	}
	return kv
}

// stale lists the kinds not current now, by name, with the earliest start of their windows.
func (c *Currency) stale() (kinds []string, since time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, kv := range c.kinds {
		if !kv.interrupted {
			continue
		}
		kinds = append(kinds, string(k))
		if since.IsZero() || kv.since.Before(since) {
			since = kv.since
		}
	}
	slices.Sort(kinds)
	return kinds, since
}

// ErrViewNotCurrent: NMI's view of the cluster is catching up after a watch interruption and
// what a grant rests on could not be confirmed with the API server; the request is answered 503.
var ErrViewNotCurrent = errors.New("view of the cluster not current")

// ViewNotCurrentError says what is not current, since when, and what the confirmation found.
type ViewNotCurrentError struct {
	Node  string
	Kinds []string  // kinds whose watch is not current (empty: it has just become current)
	Since time.Time // start of the oldest non-current window
	// Detail is what confirmation found: the read that failed or the object that differs.
	Detail string
	Err    error // the failed read, if any
}

func (e *ViewNotCurrentError) Error() string {
	what := "the cluster"
	if len(e.Kinds) > 0 {
		what = strings.Join(e.Kinds, ", ")
	}
	at := "just now"
	if !e.Since.IsZero() {
		at = "at " + e.Since.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("NMI's view of %s on node %q is catching up after its watch of the API server was interrupted %s (%s); retry", what, e.Node, at, e.Detail)
}

func (e *ViewNotCurrentError) Is(target error) bool { return target == ErrViewNotCurrent }
func (e *ViewNotCurrentError) Unwrap() error        { return e.Err }

func errText(err error) string {
	if err == nil {
		return "watch ended"
	}
	return err.Error()
}

// trackedListerWatcher reports each List/Watch outcome of one informer to the Currency.
type trackedListerWatcher struct {
	lw   toolscache.ListerWatcherWithContext
	kind viewKind
	c    *Currency
}

// newInformerTracked is cache.Options.NewInformer: the usual informer over a tracked
// ListerWatcher.
func (c *Currency) newInformerTracked(kindOf func(runtime.Object) viewKind) func(toolscache.ListerWatcher, runtime.Object, time.Duration, toolscache.Indexers) toolscache.SharedIndexInformer {
	return func(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, idx toolscache.Indexers) toolscache.SharedIndexInformer {
		t := &trackedListerWatcher{lw: toolscache.ToListerWatcherWithContext(lw), kind: kindOf(obj), c: c}
		return toolscache.NewSharedIndexInformer(t, obj, resync, idx)
	}
}

func (t *trackedListerWatcher) List(opts metav1.ListOptions) (runtime.Object, error) {
	return t.ListWithContext(context.Background(), opts)
}

func (t *trackedListerWatcher) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	o, err := t.lw.ListWithContext(ctx, opts)
	if err != nil && ctx.Err() == nil {
		t.c.interrupted(t.kind, err)
	}
	return o, err
}

func (t *trackedListerWatcher) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return t.WatchWithContext(context.Background(), opts)
}

func (t *trackedListerWatcher) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := t.lw.WatchWithContext(ctx, opts)
	if err != nil {
		if ctx.Err() == nil {
			t.c.interrupted(t.kind, err)
		}
		return w, err
	}
	t.c.established(t.kind)
	return newTrackedWatch(w, func(err error) {
		if ctx.Err() == nil {
			t.c.interrupted(t.kind, err)
		}
	}), nil
}

// trackedWatch forwards a watch's events and calls ended when it carries an error or closes.
type trackedWatch struct {
	in   watch.Interface
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func newTrackedWatch(in watch.Interface, ended func(error)) *trackedWatch {
	w := &trackedWatch{in: in, out: make(chan watch.Event), stop: make(chan struct{})}
	go func() {
		defer close(w.out)
		for ev := range in.ResultChan() {
			if ev.Type == watch.Error {
				ended(fmt.Errorf("watch error event: %v", ev.Object))
			}
			select {
			case w.out <- ev:
			case <-w.stop:
				return
			}
		}
		// Also when its consumer stopped it: the reflector then starts another watch (or is
		// stopping, which ended ignores).
		ended(nil)
	}()
	return w
}

func (w *trackedWatch) ResultChan() <-chan watch.Event { return w.out }

func (w *trackedWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.in.Stop()
	})
}
