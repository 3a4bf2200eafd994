package nmi

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
)

// Store holds the node-local view NMI answers from: pods on this node indexed by IP, their
// assignments, the identities, bindings and exceptions. Every change closes the channel returned
// by Changed, which is how waiting requests are woken without polling.
type Store struct {
	mu         sync.RWMutex
	podsByIP   map[string]map[string]*podInfo // ip -> pod key -> pod
	podsByKey  map[string]*podInfo
	aaisByPod  map[string]map[string]*aaiInfo // pod key -> aai ns/name -> aai
	aaiByKey   map[string]*aaiInfo
	identities map[string]*aadv1.AzureIdentity        // ns/name
	bindings   map[string]*aadv1.AzureIdentityBinding // ns/name
	// bySelector holds label-only bindings by selector, bySA the bindings that name a
	// ServiceAccount by (binding namespace, ServiceAccount): a request looks at both.
	bySelector map[string]map[string]*aadv1.AzureIdentityBinding
	bySA       map[saRef]map[string]*aadv1.AzureIdentityBinding
	// exceptions per namespace, sorted by name: the slice internal/binding.IsExcepted takes, kept
	// ready so that a request allocates nothing.
	exceptions map[string][]*aadv1.AzurePodIdentityException
	// implicit holds the federated identities of ServiceAccounts with Azure Workload Identity's
	// client-id annotation (only with --honor-workload-identity-annotations).
	implicit map[types.NamespacedName]*aadv1.AzureIdentity
	changed  chan struct{}
	// view tells whether the informers feeding the store are current (Watch feeds it).
	view *Currency

	// onAssigned is called (outside the lock) when an assignment becomes Assigned.
	onAssigned func(*aaiInfo)
	// onPodGone is called when a pod leaves the node, to drop per-pod state such as rate limiters.
	onPodGone func(*podInfo)
	// onPodRunning is called (outside the lock) when a pod with an IP becomes Running.
	onPodRunning func(*podInfo)
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		podsByIP: map[string]map[string]*podInfo{}, podsByKey: map[string]*podInfo{},
		aaisByPod: map[string]map[string]*aaiInfo{}, aaiByKey: map[string]*aaiInfo{},
		identities: map[string]*aadv1.AzureIdentity{}, bindings: map[string]*aadv1.AzureIdentityBinding{},
		bySelector: map[string]map[string]*aadv1.AzureIdentityBinding{},
		bySA:       map[saRef]map[string]*aadv1.AzureIdentityBinding{},
		exceptions: map[string][]*aadv1.AzurePodIdentityException{},
		implicit:   map[types.NamespacedName]*aadv1.AzureIdentity{},
		changed:    make(chan struct{}),
		view:       newCurrency(),
	}
}

// Changed returns a channel closed at the next change of any object the store holds.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// notifyLocked wakes waiters; the caller holds the write lock.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// UpsertPod records a pod's current state.
func (s *Store) UpsertPod(pod *corev1.Pod) {
	pi := newPodInfo(pod)
	s.mu.Lock()
	old := s.podsByKey[pi.key()]
	if old != nil {
		s.unindexPodLocked(old)
	}
	s.podsByKey[pi.key()] = pi
	if pi.IP != "" {
		m := s.podsByIP[pi.IP]
		if m == nil {
			m = map[string]*podInfo{}
			s.podsByIP[pi.IP] = m
		}
		m[pi.key()] = pi
	}
	s.notifyLocked()
	s.mu.Unlock()
	running := pi.Phase == corev1.PodRunning && pi.IP != "" && !pi.gone(false)
	wasRunning := old != nil && old.UID == pi.UID && old.Phase == corev1.PodRunning && old.IP != ""
	if running && !wasRunning && s.onPodRunning != nil {
		s.onPodRunning(pi)
	}
	if old != nil && old.UID != pi.UID && s.onPodGone != nil {
		s.onPodGone(old) // replaced by a pod of the same name
	}
}

// hasPodOfServiceAccount reports whether a pod of this node runs as sa.
func (s *Store) hasPodOfServiceAccount(sa types.NamespacedName) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.podsByKey {
		if p.Namespace == sa.Namespace && p.ServiceAccount == sa.Name {
			return true
		}
	}
	return false
}

// DeletePod forgets a pod.
func (s *Store) DeletePod(namespace, name string) {
	s.mu.Lock()
	old := s.podsByKey[namespace+"/"+name]
	if old != nil {
		s.unindexPodLocked(old)
		delete(s.podsByKey, old.key())
		s.notifyLocked()
	}
	s.mu.Unlock()
	if old != nil && s.onPodGone != nil {
		s.onPodGone(old)
	}
}

func (s *Store) unindexPodLocked(p *podInfo) {
	if m := s.podsByIP[p.IP]; m != nil {
		delete(m, p.key())
		if len(m) == 0 {
			delete(s.podsByIP, p.IP)
		}
	}
}

// podByIP finds the caller among this node's pods. Terminated pods are ignored (their IP may have
// been reused). A pod that is ending (being deleted, or all its containers have exited) is treated
// as gone: it may have handed its IP to a new pod whose start the watch has not shown yet. When
// more than one pod still claims the IP, the answer is refused rather than guessed: picking one
// could hand one pod the other's identities.
func (s *Store) podByIP(ip string, serveDeleting bool) (*podInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var live *podInfo
	claimants := 0
	for _, p := range s.podsByIP[ip] {
		if p.terminated() {
			continue
		}
		claimants++
		if !p.ending(serveDeleting) {
			live = p
		}
	}
	switch {
	case claimants > 1:
		return nil, &AmbiguousPodError{IP: ip}
	case live == nil:
		return nil, &PodNotFoundError{IP: ip}
	}
	return live, nil
}

func (s *Store) podByKey(namespace, name string) *podInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.podsByKey[namespace+"/"+name]
}

// UpsertAAI records an assignment.
func (s *Store) UpsertAAI(a *aadv1.AzureAssignedIdentity) {
	ai := newAAIInfo(a)
	k := a.Namespace + "/" + a.Name
	s.mu.Lock()
	old := s.aaiByKey[k]
	if old != nil {
		if m := s.aaisByPod[old.PodKey]; m != nil {
			delete(m, k)
		}
	}
	s.aaiByKey[k] = ai
	m := s.aaisByPod[ai.PodKey]
	if m == nil {
		m = map[string]*aaiInfo{}
		s.aaisByPod[ai.PodKey] = m
	}
	m[k] = ai
	s.notifyLocked()
	s.mu.Unlock()
	becameAssigned := ai.State.IsAssigned() && (old == nil || !old.State.IsAssigned() || clientIDOf(old.Identity) != clientIDOf(ai.Identity))
	if becameAssigned && s.onAssigned != nil && ai.Identity != nil {
		s.onAssigned(ai)
	}
}

func clientIDOf(id *aadv1.AzureIdentity) string {
	if id == nil {
		return ""
	}
	return id.Spec.ClientID
}

// DeleteAAI forgets an assignment.
func (s *Store) DeleteAAI(namespace, name string) {
	k := namespace + "/" + name
	s.mu.Lock()
	if old := s.aaiByKey[k]; old != nil {
		delete(s.aaiByKey, k)
		if m := s.aaisByPod[old.PodKey]; m != nil {
			delete(m, k)
			if len(m) == 0 {
				delete(s.aaisByPod, old.PodKey)
			}
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
}

// UpsertIdentity records an AzureIdentity.
func (s *Store) UpsertIdentity(id *aadv1.AzureIdentity) {
	s.mu.Lock()
	s.identities[id.Namespace+"/"+id.Name] = id
	s.notifyLocked()
	s.mu.Unlock()
}

// SecretRefs returns the Secrets (namespace/name) the identities reference.
func (s *Store) SecretRefs() map[string]bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]bool{}
	for _, id := range s.identities {
		if k := secretKey(id); k != "" {
			out[k] = true
		}
	}
	return out
}

// DeleteIdentity forgets an AzureIdentity.
func (s *Store) DeleteIdentity(namespace, name string) {
	s.mu.Lock()
	delete(s.identities, namespace+"/"+name)
	s.notifyLocked()
	s.mu.Unlock()
}

// UpsertBinding records an AzureIdentityBinding.
func (s *Store) UpsertBinding(b *aadv1.AzureIdentityBinding) {
	k := b.Namespace + "/" + b.Name
	s.mu.Lock()
	s.unindexBindingLocked(k)
	s.bindings[k] = b
	if binding.LabelOnly(b) {
		m := s.bySelector[b.Spec.Selector]
		if m == nil {
			m = map[string]*aadv1.AzureIdentityBinding{}
			s.bySelector[b.Spec.Selector] = m
		}
		m[k] = b
	} else {
		r := saRef{b.Namespace, b.Spec.ServiceAccountName}
		m := s.bySA[r]
		if m == nil {
			m = map[string]*aadv1.AzureIdentityBinding{}
			s.bySA[r] = m
		}
		m[k] = b
	}
	s.notifyLocked()
	s.mu.Unlock()
}

// DeleteBinding forgets an AzureIdentityBinding.
func (s *Store) DeleteBinding(namespace, name string) {
	s.mu.Lock()
	s.unindexBindingLocked(namespace + "/" + name)
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *Store) unindexBindingLocked(k string) {
	old := s.bindings[k]
	if old == nil {
		return
	}
	delete(s.bindings, k)
	if !binding.LabelOnly(old) {
		r := saRef{old.Namespace, old.Spec.ServiceAccountName}
		if m := s.bySA[r]; m != nil {
			delete(m, k)
			if len(m) == 0 {
				delete(s.bySA, r)
			}
		}
		return
	}
	if m := s.bySelector[old.Spec.Selector]; m != nil {
		delete(m, k)
		if len(m) == 0 {
			delete(s.bySelector, old.Spec.Selector)
		}
	}
}

// saRef names a ServiceAccount: a binding's namespace and spec.serviceAccountName.
type saRef struct{ namespace, name string }

// UpsertException records an AzurePodIdentityException (only what matching needs).
func (s *Store) UpsertException(e *aadv1.AzurePodIdentityException) {
	slim := &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name}, Spec: e.Spec}
	s.mu.Lock()
	list := s.withoutExceptionLocked(e.Namespace, e.Name)
	list = append(list, slim)
	sort.Slice(list, func(a, b int) bool { return list[a].Name < list[b].Name })
	s.exceptions[e.Namespace] = list
	s.notifyLocked()
	s.mu.Unlock()
}

// DeleteException forgets an AzurePodIdentityException.
func (s *Store) DeleteException(namespace, name string) {
	s.mu.Lock()
	if list := s.withoutExceptionLocked(namespace, name); len(list) > 0 {
		s.exceptions[namespace] = list
	} else {
		delete(s.exceptions, namespace)
	}
	s.notifyLocked()
	s.mu.Unlock()
}

// withoutExceptionLocked returns a new slice of the namespace's exceptions minus name: readers
// may hold the old slice, so it is never changed in place.
func (s *Store) withoutExceptionLocked(namespace, name string) []*aadv1.AzurePodIdentityException {
	old := s.exceptions[namespace]
	out := make([]*aadv1.AzurePodIdentityException, 0, len(old)+1)
	for _, e := range old {
		if e.Name != name {
			out = append(out, e)
		}
	}
	return out
}

// excepted reports whether an AzurePodIdentityException matches the pod, by MIC's rule
// (binding.IsExcepted): only exceptions in the pod's namespace count, and one matches when any
// one of its labels is on the pod with an equal value (values compared case-insensitively).
func (s *Store) excepted(p *podInfo) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return binding.IsExcepted(p.Namespace, p.Labels, s.exceptions[p.Namespace])
}

// grant is one identity a pod is bound to, with the bindings that bind it (where refusals are
// reported). id is nil for the grant of ignored label-only bindings (see evaluate).
type grant struct {
	id       *aadv1.AzureIdentity
	bindings []*aadv1.AzureIdentityBinding
	// weight is the highest spec.weight of bindings.
	weight int
	// pod is the store's copy of the pod the grant was decided for (set by evaluate) and
	// implicitSA the ServiceAccount of an implicit workload identity: what confirmGrant re-reads.
	pod        *podInfo
	implicitSA types.NamespacedName
}

// boundIdentitiesLocked returns the identities the pod is bound to now, by binding.Select (its
// aadpodidbinding label and/or its ServiceAccount) and the namespaced rule, highest binding
// weight first, then by identity namespace/name (the documented default order). ignored are the
// label-only bindings that selected the pod but grant nothing under RequireServiceAccount.
func (s *Store) boundIdentitiesLocked(p *podInfo, opts binding.Options) (out []grant, ignored []*aadv1.AzureIdentityBinding) {
	bp := binding.Pod{Namespace: p.Namespace, Selector: p.Selector, ServiceAccount: p.ServiceAccount}
	at := map[string]int{} // does not escape: stays on the stack
	consider := func(b *aadv1.AzureIdentityBinding) {
		switch binding.Select(b, bp, opts) {
		case binding.NoMatch:
			return
		case binding.IgnoredLabelOnly:
			ignored = append(ignored, b)
			return
		}
		k := b.Namespace + "/" + b.Spec.AzureIdentity
		id := s.identities[k]
		if id == nil || !binding.IdentityAllows(id, b, p.Namespace, opts.ForceNamespaced) {
			return
		}
		if i, ok := at[k]; ok {
			out[i].bindings = append(out[i].bindings, b)
			out[i].weight = max(out[i].weight, b.Spec.Weight)
			return
		}
		at[k] = len(out)
		out = append(out, grant{id: id, bindings: []*aadv1.AzureIdentityBinding{b}, weight: b.Spec.Weight})
	}
	if p.HasSelector {
		for _, b := range s.bySelector[p.Selector] {
			consider(b)
		}
	}
	for _, b := range s.bySA[saRef{p.Namespace, p.ServiceAccount}] {
		consider(b)
	}
	// slices.SortFunc, unlike sort.Slice, allocates nothing: this runs on every request.
	if len(out) > 1 {
		slices.SortFunc(out, func(a, b grant) int {
			if c := cmp.Compare(b.weight, a.weight); c != 0 {
				return c
			}
			if c := cmp.Compare(a.id.Namespace, b.id.Namespace); c != 0 {
				return c
			}
			return cmp.Compare(a.id.Name, b.id.Name)
		})
	}
	if len(ignored) > 1 {
		slices.SortFunc(ignored, binding.Compare)
	}
	return out, ignored
}

// assignmentLocked returns the state of the pod's assignment of id: found reports whether an
// AzureAssignedIdentity exists for it; assigned whether it is Assigned for the identity's current
// client and resource IDs (an edit of the identity must be re-assigned before it is served).
func (s *Store) assignmentLocked(podKey string, id *aadv1.AzureIdentity) (found, assigned bool) {
	for _, a := range s.aaisByPod[podKey] {
		if a.IdentityName != id.Name || (a.IdentityNamespace != "" && a.IdentityNamespace != id.Namespace) {
			continue
		}
		found = true
		if a.State.IsAssigned() && a.Identity != nil &&
			strings.EqualFold(a.Identity.Spec.ClientID, id.Spec.ClientID) &&
			strings.EqualFold(a.Identity.Spec.ResourceID, id.Spec.ResourceID) {
			return true, true
		}
	}
	return found, false
}
