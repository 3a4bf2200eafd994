// Package fakecloud is an in-memory cloud.Compute for unit tests: it applies updates at once,
// counts calls, and fails calls on demand.
package fakecloud

import (
	"context"
	"strings"
	"sync"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Fake is an in-memory cloud.Compute. The zero value is not usable; call New.
type Fake struct {
	mu        sync.Mutex
	resources map[string]*cloud.Identities
	// Gets and Updates count calls per resource key.
	Gets, Updates map[string]int
	// Fail, when set, is consulted before every call; a non-nil error fails the call.
	Fail func(op string, r cloud.Resource, u *cloud.Update) error
	// ClientIDs maps lower-cased identity IDs to the client ID reads and updates report for
	// them, as ARM does; identities not in it are reported with "" (ARM said nothing).
	ClientIDs map[string]string
}

// New returns a fake with no resources; Get of an unknown resource creates it empty.
func New() *Fake {
	return &Fake{resources: map[string]*cloud.Identities{}, Gets: map[string]int{}, Updates: map[string]int{}, ClientIDs: map[string]string{}}
}

func (f *Fake) res(r cloud.Resource) *cloud.Identities {
	k := r.Key()
	if f.resources[k] == nil {
		f.resources[k] = &cloud.Identities{UserAssigned: map[string]string{}}
	}
	return f.resources[k]
}

// Set replaces a resource's identities (out-of-band change).
func (f *Fake) Set(r cloud.Resource, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	x := f.res(r)
	x.UserAssigned = map[string]string{}
	for _, id := range ids {
		x.UserAssigned[strings.ToLower(id)] = f.ClientIDs[strings.ToLower(id)]
	}
}

// Assigned returns a resource's identity IDs.
func (f *Fake) Assigned(r cloud.Resource) map[string]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	for id := range f.res(r).UserAssigned {
		out[id] = true
	}
	return out
}

// Get implements cloud.Compute.
func (f *Fake) Get(_ context.Context, r cloud.Resource) (cloud.Identities, error) {
	if f.Fail != nil {
		if err := f.Fail("get", r, nil); err != nil {
			return cloud.Identities{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Gets[r.Key()]++
	return f.copyOf(r), nil
}

func (f *Fake) copyOf(r cloud.Resource) cloud.Identities {
	x := f.res(r)
	cp := cloud.Identities{SystemAssigned: x.SystemAssigned, UserAssigned: map[string]string{}}
	for k, v := range x.UserAssigned {
		cp.UserAssigned[k] = v
	}
	return cp
}

// Update implements cloud.Compute.
func (f *Fake) Update(_ context.Context, r cloud.Resource, u cloud.Update) (cloud.Identities, error) {
	if f.Fail != nil {
		if err := f.Fail("update", r, &u); err != nil {
			return cloud.Identities{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Updates[r.Key()]++
	x := f.res(r)
	for _, id := range u.Remove {
		delete(x.UserAssigned, strings.ToLower(id))
	}
	for _, id := range u.Add {
		x.UserAssigned[strings.ToLower(id)] = f.ClientIDs[strings.ToLower(id)]
	}
	return f.copyOf(r), nil
}
