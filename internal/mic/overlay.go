package mic

import (
	"strconv"
	"sync"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// overlay remembers MIC's own AzureAssignedIdentity writes until the informer cache shows them,
// so that a pass or a worker never acts on a cache that has not caught up (which would create an
// object twice or re-assign what was just assigned).
type overlay struct {
	mu sync.Mutex
	// m holds the object as written, or nil (with rv) for a deletion.
	m map[desired.Key]written
}

type written struct {
	obj *aadv1.AzureAssignedIdentity // nil: deleted
	rv  int64
}

func newOverlay() *overlay { return &overlay{m: map[desired.Key]written{}} }

func rvOf(o *aadv1.AzureAssignedIdentity) int64 {
	v, _ := strconv.ParseInt(o.ResourceVersion, 10, 64)
	return v
}

func (o *overlay) put(obj *aadv1.AzureAssignedIdentity) {
	o.mu.Lock()
	o.m[desired.Key{Namespace: obj.Namespace, Name: obj.Name}] = written{obj: obj, rv: rvOf(obj)}
	o.mu.Unlock()
}

func (o *overlay) deleted(k desired.Key, lastRV int64) {
	o.mu.Lock()
	o.m[k] = written{rv: lastRV}
	o.mu.Unlock()
}

// ours reports whether an informer's add (or delete) of obj is MIC's own last write (deletion).
func (o *overlay) ours(obj *aadv1.AzureAssignedIdentity, deleted bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	w, ok := o.m[desired.Key{Namespace: obj.Namespace, Name: obj.Name}]
	if !ok {
		return false
	}
	if deleted {
		return w.obj == nil
	}
	return w.obj != nil && w.rv == rvOf(obj)
}

// prune forgets the writes the informer cache has caught up with; cached must be every AAI in
// the cache. Resource versions are compared as numbers: etcd's are, and a newer object (someone
// else wrote after us) wins.
func (o *overlay) prune(cached []*aadv1.AzureAssignedIdentity) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.m) == 0 {
		return
	}
	seen := make(map[desired.Key]bool, len(o.m))
	for _, c := range cached {
		k := desired.Key{Namespace: c.Namespace, Name: c.Name}
		w, ok := o.m[k]
		if !ok {
			continue
		}
		seen[k] = true
		crv := rvOf(c)
		if (w.obj == nil && crv > w.rv) || (w.obj != nil && crv >= w.rv) {
			delete(o.m, k) // re-created after our delete, or our write (or a newer one) is cached
		}
	}
	for k, w := range o.m {
		if !seen[k] && w.obj == nil {
			delete(o.m, k) // the whole cache agrees it is gone
		}
	}
}

// view is one VM/VMSS's objects as MIC last left them: cached (that group's objects from the
// informer cache) with MIC's newer writes merged in, its deletions left out, and the objects it
// created that the cache does not show yet (those belongs picks) added.
func (o *overlay) view(cached []*aadv1.AzureAssignedIdentity, belongs func(*aadv1.AzureAssignedIdentity) bool) []*aadv1.AzureAssignedIdentity {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.m) == 0 {
		return cached
	}
	out := make([]*aadv1.AzureAssignedIdentity, 0, len(cached))
	seen := make(map[desired.Key]bool, len(cached))
	for _, c := range cached {
		k := desired.Key{Namespace: c.Namespace, Name: c.Name}
		seen[k] = true
		w, ok := o.m[k]
		crv := rvOf(c)
		switch {
		case !ok, crv > w.rv, w.obj != nil && crv == w.rv:
			out = append(out, c)
		case w.obj != nil: // our write, not cached yet
			out = append(out, w.obj)
		}
		// otherwise: our delete, not cached yet
	}
	for k, w := range o.m {
		if !seen[k] && w.obj != nil && belongs(w.obj) {
			out = append(out, w.obj) // created, not in the cache yet
		}
	}
	return out
}

// latest returns the freshest object MIC knows for k: its own last write, else have (nil when
// MIC deleted it).
func (o *overlay) latest(k desired.Key, have *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.m[k]; ok {
		if w.obj == nil {
			return nil
		}
		if have == nil || rvOf(have) < w.rv {
			return w.obj
		}
	}
	return have
}

// size is the number of remembered writes (tests).
func (o *overlay) size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.m)
}
