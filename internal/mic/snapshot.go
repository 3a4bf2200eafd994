package mic

import (
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// snapshot is one planning pass's result, read by the workers: the desired state and the cached
// AAIs, both grouped by VM/VMSS (the zero key holds the pods whose node maps to none). It is
// never modified after the pass stored it.
type snapshot struct {
	st   *desired.State
	have map[cloud.ResourceKey][]*aadv1.AzureAssignedIdentity
	res  map[cloud.ResourceKey]cloud.Resource
	// nodes are all nodes ever seen, to place AAIs MIC created that the cache does not show yet.
	nodes map[string]desired.Node
	pods  map[types.NamespacedName]types.UID
}

func newSnapshot(st *desired.State, nodes map[string]desired.Node, pods map[types.NamespacedName]types.UID, cached []*aadv1.AzureAssignedIdentity) *snapshot {
	s := &snapshot{st: st, have: map[cloud.ResourceKey][]*aadv1.AzureAssignedIdentity{}, res: map[cloud.ResourceKey]cloud.Resource{},
		nodes: nodes, pods: pods}
	for _, a := range cached {
		r := s.resourceOf(a)
		s.have[r.Key()] = append(s.have[r.Key()], a)
		s.res[r.Key()] = r
	}
	for k, g := range st.Groups {
		s.res[k] = g.Resource
	}
	if st.Unresolved != nil {
		s.res[cloud.ResourceKey{}] = cloud.Resource{}
	}
	return s
}

// resourceOf is the VM/VMSS an existing AAI's node maps to (zero when none).
func (s *snapshot) resourceOf(a *aadv1.AzureAssignedIdentity) cloud.Resource {
	return s.nodes[a.Spec.NodeName].Resource
}

// groupInput is what one reconcile of a VM/VMSS starts from.
type groupInput struct {
	key cloud.ResourceKey
	res cloud.Resource
	// want are the AAIs that should exist and ids the identities the resource needs.
	want []*desired.AAI
	ids  map[string]string
	// have are the existing AAIs as MIC last left them (the overlay applied).
	have []*aadv1.AzureAssignedIdentity
}

// input assembles k's inputs, merging MIC's own recent writes (ov) into the cached objects.
func (s *snapshot) input(k cloud.ResourceKey, ov *overlay) groupInput {
	in := groupInput{key: k, res: s.res[k]}
	if g := s.st.Group(k); g != nil {
		in.want, in.ids = g.AAIs, g.Identities
	}
	in.have = ov.view(s.have[k], func(a *aadv1.AzureAssignedIdentity) bool { return s.resourceOf(a).Key() == k })
	return in
}

// podUID is the UID of the pod of a (for event references).
func (s *snapshot) podUID(a *desired.AAI) types.UID { return s.pods[podKey(a)] }
