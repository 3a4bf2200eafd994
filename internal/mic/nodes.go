package mic

import (
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// nodeResources maps node names to their VM/VMSS. A node is remembered after it is gone, so that
// the AAIs of its pods can still be released on its VM/VMSS.
type nodeResources struct {
	mu sync.Mutex
	m  map[string]desired.Node
}

func newNodeResources() *nodeResources { return &nodeResources{m: map[string]desired.Node{}} }

// resolve maps nodes and returns the current ones (the desired state's input) and every node
// ever seen (to group existing AAIs), both copies the caller owns.
func (n *nodeResources) resolve(nodes []corev1.Node, d cloud.Defaults) (current, all map[string]desired.Node) {
	current = make(map[string]desired.Node, len(nodes))
	for i := range nodes {
		nd := &nodes[i]
		r, _, err := cloud.ResourceForNode(nd.Name, nd.Spec.ProviderID, d)
		current[nd.Name] = desired.Node{Name: nd.Name, Resource: r, Err: err}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	maps.Copy(n.m, current)
	return current, maps.Clone(n.m)
}
