// Package fakecloud is an in-memory cloud.Compute for fast tests of MIC's per-VM/VMSS reconcile:
// it applies updates at once, records every call, and fails calls on demand (queued errors or a
// function), in the manner of karpenter's cloudprovider/fake.
package fakecloud

import (
	"context"
	"maps"
	"strings"
	"sync"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Op is a kind of call.
type Op string

const (
	OpGet    Op = "get"
	OpUpdate Op = "update"
)

// Call is one recorded call; Update is the zero value for gets.
type Call struct {
	Op       Op
	Resource cloud.Resource
	Update   cloud.Update
	// Err is what the call returned.
	Err error
}

// Fake is an in-memory cloud.Compute. The zero value is not usable; call New.
type Fake struct {
	mu        sync.Mutex
	resources map[cloud.ResourceKey]*cloud.Identities
	calls     []Call
	next      map[Op][]error
	// Fail, when set, is consulted before every call (after queued errors); a non-nil error
	// fails the call without changing anything.
	Fail func(op Op, r cloud.Resource, u *cloud.Update) error
	// clientIDs maps lower-cased identity IDs to the client ID reads and updates report for
	// them, as ARM does; identities not in it are reported with "" (ARM said nothing).
	clientIDs map[string]string
}

var _ cloud.Compute = (*Fake)(nil)

// New returns a fake with no resources; a call on an unknown resource finds it empty.
func New() *Fake {
	return &Fake{resources: map[cloud.ResourceKey]*cloud.Identities{}, next: map[Op][]error{}, clientIDs: map[string]string{}}
}

// SetClientID makes ARM report clientID for identity id.
func (f *Fake) SetClientID(id, clientID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clientIDs[strings.ToLower(id)] = clientID
}

// FailNext makes the next calls of kind op fail with errs, one each, in order.
func (f *Fake) FailNext(op Op, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next[op] = append(f.next[op], errs...)
}

// Set replaces a resource's identities (an out-of-band change).
func (f *Fake) Set(r cloud.Resource, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	x := f.res(r)
	x.UserAssigned = map[string]string{}
	for _, id := range ids {
		x.UserAssigned[strings.ToLower(id)] = f.clientIDs[strings.ToLower(id)]
	}
}

// Assigned returns a resource's identity IDs (lower-cased).
func (f *Fake) Assigned(r cloud.Resource) map[string]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	for id := range f.res(r).UserAssigned {
		out[id] = true
	}
	return out
}

// Calls returns the calls so far, in order.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Count returns how many calls of kind op were made (failed ones included).
func (f *Fake) Count(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c.Op == op {
			n++
		}
	}
	return n
}

// Reset forgets the recorded calls (resources and queued errors stay).
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// Get implements cloud.Compute.
func (f *Fake) Get(_ context.Context, r cloud.Resource) (cloud.Identities, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure(OpGet, r, nil); err != nil {
		return cloud.Identities{}, err
	}
	f.calls = append(f.calls, Call{Op: OpGet, Resource: r})
	return f.copyOf(r), nil
}

// Update implements cloud.Compute.
func (f *Fake) Update(_ context.Context, r cloud.Resource, u cloud.Update) (cloud.Identities, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure(OpUpdate, r, &u); err != nil {
		return cloud.Identities{}, err
	}
	f.calls = append(f.calls, Call{Op: OpUpdate, Resource: r, Update: u})
	x := f.res(r)
	for _, id := range u.Remove {
		delete(x.UserAssigned, strings.ToLower(id))
	}
	for _, id := range u.Add {
		x.UserAssigned[strings.ToLower(id)] = f.clientIDs[strings.ToLower(id)]
	}
	return f.copyOf(r), nil
}

// failure returns the error the call must fail with, recording the failed call. f.mu is held.
func (f *Fake) failure(op Op, r cloud.Resource, u *cloud.Update) error {
	var err error
	if q := f.next[op]; len(q) > 0 {
		err, f.next[op] = q[0], q[1:]
	} else if f.Fail != nil {
		err = f.Fail(op, r, u)
	}
	if err != nil {
		c := Call{Op: op, Resource: r, Err: err}
		if u != nil {
			c.Update = *u
		}
		f.calls = append(f.calls, c)
	}
	return err
}

func (f *Fake) res(r cloud.Resource) *cloud.Identities {
	k := r.Key()
	if f.resources[k] == nil {
		f.resources[k] = &cloud.Identities{UserAssigned: map[string]string{}}
	}
	return f.resources[k]
}

func (f *Fake) copyOf(r cloud.Resource) cloud.Identities {
	x := f.res(r)
	return cloud.Identities{SystemAssigned: x.SystemAssigned, UserAssigned: maps.Clone(x.UserAssigned)}
}
