package nmi

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// refreshRig is a cache holding one entry past its refresh point, whose refreshes block until
// release is closed and then answer with err (nil: a fresh token).
type refreshRig struct {
	c       *TokenCache
	key     cacheKey
	calls   atomic.Int32
	release chan struct{}
	err     error
}

func newRefreshRig(t *testing.T) *refreshRig {
	t.Helper()
	r := &refreshRig{c: NewTokenCache(CacheOptions{}, NewMetrics(nil), logr.Discard()), key: cacheKey{cred: credKey{kind: credIMDS, resourceID: "refresh"}, resource: armResource}, release: make(chan struct{})}
	fetch := func(ctx context.Context) ([]Token, error) {
		if r.calls.Add(1) > 1 {
			<-r.release
			if r.err != nil {
				return nil, r.err
			}
		}
		return []Token{{AccessToken: "t", ExpiresOn: time.Now().Add(time.Hour), NotBefore: time.Now(), Resource: armResource, TokenType: "Bearer"}}, nil
	}
	e, err := r.c.Fetch(context.Background(), r.key, fetch)
	if err != nil {
		t.Fatal(err)
	}
	e.refreshAt = time.Now().Add(-time.Second) // due, yet valid for an hour
	return r
}

// entry returns the key's current entry.
func (r *refreshRig) entry() *cacheEntry {
	r.c.mu.RLock()
	defer r.c.mu.RUnlock()
	return r.c.m[r.key]
}

// hitMany looks the key up n times from 50 goroutines and the sweep n/10 times.
func (r *refreshRig) hitMany(t *testing.T, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 50 {
				if r.c.Lookup(r.key) == nil {
					t.Error("a valid entry was not served")
					return
				}
			}
		}()
	}
	for range n / 10 {
		r.c.sweep(time.Now())
	}
	wg.Wait()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Many hits on an entry past its refresh point start one background refresh (one goroutine, one
// fetch), not one goroutine per hit.
func TestRefreshAheadOnePerEntry(t *testing.T) {
	r := newRefreshRig(t)
	old := r.entry()
	before := runtime.NumGoroutine()
	r.hitMany(t, 2000)
	waitFor(t, "the refresh to start", func() bool { return r.calls.Load() == 2 })
	started := runtime.NumGoroutine() - before
	close(r.release)
	waitFor(t, "the refreshed entry", func() bool { return r.entry() != old })
	if started > 20 {
		t.Errorf("2,200 hits past the refresh point left %d more goroutines running, want 1 refresh", started)
	}
	if n := r.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 2 (the fill and one refresh)", n)
	}
	if e := r.entry(); time.Now().After(e.refreshAt) || e.refreshing.Load() {
		t.Errorf("the refreshed entry is due again (refreshAt %s) or marked refreshing", e.refreshAt)
	}
}

// A failed refresh keeps serving the cached token and lets a later hit try again.
func TestRefreshAheadRetriesAfterFailure(t *testing.T) {
	r := newRefreshRig(t)
	r.err = errors.New("imds down")
	e := r.entry()
	close(r.release)
	r.hitMany(t, 100)
	waitFor(t, "the failed refresh to end", func() bool { return r.calls.Load() >= 2 && !e.refreshing.Load() })
	if r.entry() != e {
		t.Fatal("a failed refresh replaced the entry")
	}
	n := r.calls.Load()
	if r.c.Lookup(r.key) == nil {
		t.Fatal("the cached token is not served after a failed refresh")
	}
	waitFor(t, "a new refresh after the failure", func() bool { return r.calls.Load() > n })
}
