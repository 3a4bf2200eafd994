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

// apply merges the overlay into objects read from the cache, and forgets entries the cache has
// caught up with. Resource versions are compared as numbers: etcd's are, and a newer cached
// object (someone else wrote after us) wins.
// belongs, when not nil, limits the objects added from the overlay to one group.
func (o *overlay) apply(cached []*aadv1.AzureAssignedIdentity, belongs func(*aadv1.AzureAssignedIdentity) bool) []*aadv1.AzureAssignedIdentity {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.m) == 0 {
		return cached
	}
	out := make([]*aadv1.AzureAssignedIdentity, 0, len(cached)+len(o.m))
	seen := make(map[desired.Key]bool, len(o.m))
	for _, c := range cached {
		k := desired.Key{Namespace: c.Namespace, Name: c.Name}
		w, ok := o.m[k]
		if !ok {
			out = append(out, c)
			continue
		}
		seen[k] = true
		crv := rvOf(c)
		switch {
		case w.obj == nil && crv > w.rv: // re-created after our delete
			delete(o.m, k)
			out = append(out, c)
		case w.obj == nil: // our delete not seen yet
		case crv >= w.rv:
			delete(o.m, k)
			out = append(out, c)
		default:
			out = append(out, w.obj)
		}
	}
	for k, w := range o.m {
		if seen[k] {
			continue
		}
		if w.obj == nil {
			if belongs == nil {
				delete(o.m, k) // the whole cache agrees it is gone
			}
			continue
		}
		if belongs == nil || belongs(w.obj) {
			out = append(out, w.obj) // created, not in the cache yet
		}
	}
	return out
}
