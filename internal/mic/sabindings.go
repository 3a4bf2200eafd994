package mic

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
)

// saBindings tracks which (namespace, ServiceAccount) pairs some AzureIdentityBinding names. MIC
// caches every pod (a ServiceAccount binding needs no label), but only pods a binding may select
// start a planning pass: those with the aadpodidbinding label and those running as a tracked
// ServiceAccount. The binding event handler updates the set before it kicks a pass, so a pod
// whose event was filtered out is still in the cache that pass lists.
type saBindings struct {
	mu    sync.RWMutex
	byKey map[types.NamespacedName]saRef // binding -> what it names
	count map[saRef]int
}

type saRef struct{ namespace, name string }

func newSABindings() *saBindings {
	return &saBindings{byKey: map[types.NamespacedName]saRef{}, count: map[saRef]int{}}
}

// track records a binding's add or update (deleted=false) or its deletion.
func (s *saBindings) track(obj any, deleted bool) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	b, ok := obj.(*aadv1.AzureIdentityBinding)
	if !ok {
		return
	}
	k := types.NamespacedName{Namespace: b.Namespace, Name: b.Name}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byKey[k]; ok {
		delete(s.byKey, k)
		if s.count[old]--; s.count[old] <= 0 {
			delete(s.count, old)
		}
	}
	if deleted || binding.LabelOnly(b) {
		return
	}
	ref := saRef{b.Namespace, b.Spec.ServiceAccountName}
	s.byKey[k] = ref
	s.count[ref]++
}

// selectable reports whether some binding may select the pod: it has the aadpodidbinding label
// or runs as a ServiceAccount that a binding in its namespace names. Objects of other types
// count as selectable (the safe answer).
func (s *saBindings) selectable(obj any) bool {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return true
	}
	if _, ok := p.Labels[aadv1.PodLabelKey]; ok {
		return true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.count[saRef{p.Namespace, binding.PodServiceAccount(p.Spec.ServiceAccountName)}] > 0
}
