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

// apply merges the overlay into objects. Resource versions are compared as numbers: etcd's are,
// and a newer object (someone else wrote after us) wins.
//
// With belongs nil, objs must be the informer cache's own objects: entries the cache has caught
// up with are forgotten. With belongs set (a worker, on its snapshot, which may itself hold
// overlay objects), nothing is forgotten, and only objects of the worker's group are added.
func (o *overlay) apply(objs []*aadv1.AzureAssignedIdentity, belongs func(*aadv1.AzureAssignedIdentity) bool) []*aadv1.AzureAssignedIdentity {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.m) == 0 {
		return objs
	}
	prune := belongs == nil
	out := make([]*aadv1.AzureAssignedIdentity, 0, len(objs)+len(o.m))
	seen := make(map[desired.Key]bool, len(o.m))
	for _, c := range objs {
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
			if prune {
				delete(o.m, k)
			}
			out = append(out, c)
		case w.obj == nil: // our delete not seen yet
		case crv >= w.rv:
			if prune {
				delete(o.m, k)
			}
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
			if prune {
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
