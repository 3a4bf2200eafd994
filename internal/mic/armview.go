package mic

import (
	"sync"

	"github.com/podidentity/podidentity/internal/cloud"
)

// armView is MIC's last known identity block of each VM/VMSS, so that a steady state costs no
// ARM read. An entry marked stale is read again before it is planned on.
type armView struct {
	mu sync.Mutex
	m  map[cloud.ResourceKey]knownState
}

type knownState struct {
	ids   cloud.Identities
	stale bool
}

func newARMView() *armView { return &armView{m: map[cloud.ResourceKey]knownState{}} }

// get returns what is known of k; ok is false when nothing is known or it is stale.
func (v *armView) get(k cloud.ResourceKey) (ids cloud.Identities, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, found := v.m[k]
	return s.ids, found && !s.stale
}

// set records ids for k (stale: usable for states, but re-read before the next plan).
func (v *armView) set(k cloud.ResourceKey, ids cloud.Identities, stale bool) {
	v.mu.Lock()
	v.m[k] = knownState{ids: ids, stale: stale}
	v.mu.Unlock()
}

// markStale makes the next reconcile of k read ARM first.
func (v *armView) markStale(k cloud.ResourceKey) {
	v.mu.Lock()
	if s, ok := v.m[k]; ok {
		s.stale = true
		v.m[k] = s
	}
	v.mu.Unlock()
}

// markAllStale makes every next reconcile read ARM first (the periodic re-read).
func (v *armView) markAllStale() {
	v.mu.Lock()
	for k, s := range v.m {
		s.stale = true
		v.m[k] = s
	}
	v.mu.Unlock()
}
