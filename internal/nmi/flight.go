package nmi

import (
	"context"
	"sync"
)

// flights runs one call per key at a time and hands its result to everyone who asked meanwhile.
// x/sync/singleflight does this for string keys only; NMI's keys are structs (no glued strings).
type flights[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]*flight[V]
}

type flight[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// do starts fn for key unless it runs already, and waits for the result until ctx ends. fn runs
// detached from ctx: one caller giving up does not fail the others.
func (g *flights[K, V]) do(ctx context.Context, key K, fn func() (V, error)) (V, error) {
	f, _ := g.start(key, fn)
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// start returns the flight of key, starting fn in the background when none runs; started says
// whether this call started it.
func (g *flights[K, V]) start(key K, fn func() (V, error)) (_ *flight[V], started bool) {
	g.mu.Lock()
	if f := g.m[key]; f != nil {
		g.mu.Unlock()
		return f, false
	}
	if g.m == nil {
		g.m = map[K]*flight[V]{}
	}
	f := &flight[V]{done: make(chan struct{})}
	g.m[key] = f
	g.mu.Unlock()
	go func() {
		defer func() {
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(f.done)
		}()
		f.val, f.err = fn()
	}()
	return f, true
}
