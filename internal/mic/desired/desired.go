// Package desired is MIC's pure core: from pods, bindings, identities and nodes it computes which
// AzureAssignedIdentities should exist and which identities each VM / VM scale set needs; it
// diffs that against the AzureAssignedIdentities that exist; and it plans one resource's identity
// changes. No I/O, no client-go, no Azure SDK: everything here is table-tested.
package desired

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/cloud"
)

// Pod is what the computation needs of a pod.
type Pod struct {
	Namespace, Name string
	// Selector is the aadpodidbinding label value.
	Selector string
	// ServiceAccount is spec.serviceAccountName ("" counts as "default").
	ServiceAccount string
	// NodeName is spec.nodeName; empty while unscheduled.
	NodeName string
	// Finished is true in phase Succeeded or Failed.
	Finished bool
}

// Node is a node with its compute resource already resolved (see cloud.ResourceForNode).
type Node struct {
	Name string
	// Resource is zero when the node cannot be mapped (Err says why).
	Resource cloud.Resource
	Err      error
}

// Options are MIC's behaviour switches that change the desired state.
type Options struct {
	ForceNamespaced bool
	// KeepFinishedPods keeps identities for Succeeded/Failed pods, as upstream did.
	KeepFinishedPods bool
	// RequireServiceAccount ignores bindings without spec.serviceAccountName (each is reported
	// as a ProblemLabelOnlyIgnored).
	RequireServiceAccount bool
	// SkipFederated writes no AzureAssignedIdentities for federated identities (NMI resolves
	// those from the bindings itself).
	SkipFederated bool
}

// Input is one snapshot of the cluster.
type Input struct {
	Pods       []Pod
	Bindings   []*aadv1.AzureIdentityBinding
	Identities []*aadv1.AzureIdentity
	// Nodes by name. A pod on a node missing here gets an AAI in the unresolved group.
	Nodes   map[string]Node
	Options Options
}

// Key names an AzureAssignedIdentity (or any namespaced object a Problem concerns).
type Key = types.NamespacedName

// AAI is one AzureAssignedIdentity that should exist.
type AAI struct {
	Key
	PodName, PodNamespace, NodeName string
	Identity                        *aadv1.AzureIdentity
	Binding                         *aadv1.AzureIdentityBinding
	// Resource is the compute resource of the pod's node; zero when unresolved.
	Resource cloud.Resource
}

// NeedsAzure reports whether the identity must be on the VM/VMSS: a user-assigned MSI that is not
// federated. Service principals and federated identities get their tokens from Azure AD through
// NMI, without any assignment.
func (a *AAI) NeedsAzure() bool { return needsAzure(a.Identity) }

func needsAzure(id *aadv1.AzureIdentity) bool {
	return id.Spec.Type == aadv1.UserAssignedMSI && !id.Spec.IsFederated()
}

// IdentityID is the lower-cased ARM ID of the identity ("" for service principals).
func (a *AAI) IdentityID() string {
	if !a.NeedsAzure() {
		return ""
	}
	return binding.NormalizeID(a.Identity.Spec.ResourceID)
}

// Group is everything desired on one compute resource.
type Group struct {
	Resource cloud.Resource
	AAIs     []*AAI
	// Identities maps each lower-cased user-assigned identity ID the resource needs to its
	// client ID.
	Identities map[string]string
}

// ProblemKind classifies bad input.
type ProblemKind string

const (
	ProblemMissingIdentity   ProblemKind = "MissingIdentity"
	ProblemNamespaceMismatch ProblemKind = "NamespaceMismatch"
	ProblemBadResourceID     ProblemKind = "BadResourceID"
	ProblemNameCollision     ProblemKind = "NameCollision"
	ProblemUnknownNode       ProblemKind = "UnknownNode"
	ProblemBadNode           ProblemKind = "BadNode"
	// ProblemLabelOnlyIgnored: a binding without spec.serviceAccountName while ServiceAccount
	// bindings are required.
	ProblemLabelOnlyIgnored ProblemKind = "LabelOnlyBindingIgnored"
)

// Problem is bad input that affects some pods and not others. Object names the object the
// warning belongs on.
type Problem struct {
	Kind ProblemKind
	// ObjectKind is "AzureIdentityBinding", "AzureIdentity", "Pod" or "Node".
	ObjectKind string
	Object     Key
	Message    string
}

// State is the result of Compute.
type State struct {
	AAIs map[Key]*AAI
	// Groups by the key of their VM/VMSS.
	Groups map[cloud.ResourceKey]*Group
	// Unresolved holds the AAIs whose node maps to no compute resource (nil when there are none);
	// its Resource is zero and it needs no identities.
	Unresolved *Group
	Problems   []Problem
}

// Group returns the group of k: Unresolved for the zero key, nil when nothing is desired there.
func (s *State) Group(k cloud.ResourceKey) *Group {
	if k.IsZero() {
		return s.Unresolved
	}
	return s.Groups[k]
}

// Compute derives the desired state. It never fails: bad input becomes Problems and affects only
// the pods it concerns.
func Compute(in Input) *State {
	st := &State{AAIs: make(map[Key]*AAI, len(in.Pods)), Groups: map[cloud.ResourceKey]*Group{}}
	bopts := binding.Options{ForceNamespaced: in.Options.ForceNamespaced, RequireServiceAccount: in.Options.RequireServiceAccount}

	// Identities with a malformed resource ID cannot be assigned; drop them like upstream but say so.
	ids := make([]*aadv1.AzureIdentity, 0, len(in.Identities))
	for _, id := range in.Identities {
		if id == nil {
			continue
		}
		if id.Spec.Type == aadv1.UserAssignedMSI && !id.Spec.IsFederated() && !binding.ValidResourceID(id.Spec.ResourceID) {
			st.Problems = append(st.Problems, Problem{Kind: ProblemBadResourceID, ObjectKind: "AzureIdentity",
				Object: Key{Namespace: id.Namespace, Name: id.Name},
				Message: fmt.Sprintf("AzureIdentity %s/%s has spec.resourceID %q, which is not a user-assigned identity ID; set it to /subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",
					id.Namespace, id.Name, id.Spec.ResourceID)})
			continue
		}
		ids = append(ids, id)
	}
	idx := binding.NewIndex(in.Bindings, ids, bopts)
	for _, b := range idx.Ignored() {
		st.Problems = append(st.Problems, Problem{Kind: ProblemLabelOnlyIgnored, ObjectKind: "AzureIdentityBinding",
			Object: Key{Namespace: b.Namespace, Name: b.Name}, Message: binding.IgnoredMessage(b)})
	}
	// Per-node group and per-identity lower-cased ID are computed once, not once per pod.
	groupOf := make(map[string]*Group, len(in.Nodes))
	lowerID := make(map[*aadv1.AzureIdentity]string, len(ids))
	for _, id := range ids {
		if needsAzure(id) {
			lowerID[id] = binding.NormalizeID(id.Spec.ResourceID)
		}
	}
	type reportKey struct {
		kind       ProblemKind
		objectKind string
		object     Key
	}
	reported := map[reportKey]bool{}
	report := func(p Problem) {
		k := reportKey{p.Kind, p.ObjectKind, p.Object}
		if !reported[k] {
			reported[k] = true
			st.Problems = append(st.Problems, p)
		}
	}

	for i := range in.Pods {
		p := &in.Pods[i]
		if p.NodeName == "" || (p.Finished && !in.Options.KeepFinishedPods) {
			continue
		}
		res := idx.Lookup(binding.Pod{Namespace: p.Namespace, Selector: p.Selector, ServiceAccount: p.ServiceAccount})
		for _, s := range res.Skipped {
			report(Problem{Kind: skipKind(s.Reason), ObjectKind: "AzureIdentityBinding", Object: Key{Namespace: s.Binding.Namespace, Name: s.Binding.Name},
				Message: skipMessage(s)})
		}
		if len(res.Matches) == 0 {
			continue
		}
		node, known := in.Nodes[p.NodeName]
		if !known {
			report(Problem{Kind: ProblemUnknownNode, ObjectKind: "Pod", Object: Key{Namespace: p.Namespace, Name: p.Name},
				Message: fmt.Sprintf("pod %s/%s runs on node %q, which MIC does not know (yet); identities are assigned once the node object exists", p.Namespace, p.Name, p.NodeName)})
		} else if node.Err != nil {
			report(Problem{Kind: ProblemBadNode, ObjectKind: "Node", Object: Key{Namespace: "", Name: node.Name},
				Message: fmt.Sprintf("node %s: %v; set spec.providerID to the Azure VM or VMSS instance ID", node.Name, node.Err)})
		}
		for _, m := range res.Matches {
			if in.Options.SkipFederated && m.Identity.Spec.IsFederated() {
				continue
			}
			k := Key{Namespace: binding.AssignedIdentityNamespace(m.Identity, bopts.ForceNamespaced), Name: binding.AssignedIdentityName(p.Name, p.Namespace, m.Identity.Name)}
			if prev, dup := st.AAIs[k]; dup {
				if prev.Identity == m.Identity {
					// Two bindings of one identity (a label binding and its ServiceAccount
					// successor, say): one assignment serves both.
					continue
				}
				report(Problem{Kind: ProblemNameCollision, ObjectKind: "AzureIdentityBinding", Object: Key{Namespace: m.Binding.Namespace, Name: m.Binding.Name},
					Message: fmt.Sprintf("AzureIdentityBinding %s/%s: AzureIdentity %s/%s has the same name as %s/%s, which pod %s/%s already uses through binding %s/%s; AzureAssignedIdentity %s can hold only one, so %s/%s is ignored for this pod: rename one of the identities",
						m.Binding.Namespace, m.Binding.Name, m.Identity.Namespace, m.Identity.Name, prev.Identity.Namespace, prev.Identity.Name, p.Namespace, p.Name,
						prev.Binding.Namespace, prev.Binding.Name, k, m.Identity.Namespace, m.Identity.Name)})
				continue
			}
			a := &AAI{Key: k, PodName: p.Name, PodNamespace: p.Namespace, NodeName: p.NodeName,
				Identity: m.Identity, Binding: m.Binding, Resource: node.Resource}
			st.AAIs[k] = a
			g := groupOf[p.NodeName]
			if g == nil {
				g = st.group(a.Resource)
				groupOf[p.NodeName] = g
			}
			g.AAIs = append(g.AAIs, a)
			if a.NeedsAzure() && !g.Resource.IsZero() {
				g.Identities[lowerID[a.Identity]] = a.Identity.Spec.ClientID
			}
		}
	}
	return st
}

func skipKind(r binding.SkipReason) ProblemKind {
	if r == binding.MissingIdentity {
		return ProblemMissingIdentity
	}
	return ProblemNamespaceMismatch
}

func skipMessage(s binding.Skipped) string {
	b := s.Binding
	if s.Reason == binding.MissingIdentity {
		return fmt.Sprintf("AzureIdentityBinding %s/%s names AzureIdentity %q, which does not exist in namespace %s (or has an invalid spec.resourceID); create it there or fix spec.azureIdentity",
			b.Namespace, b.Name, b.Spec.AzureIdentity, b.Namespace)
	}
	return fmt.Sprintf("AzureIdentityBinding %s/%s selects a pod in another namespace, but AzureIdentity %q is namespaced: pod, binding and identity must share one namespace",
		b.Namespace, b.Name, b.Spec.AzureIdentity)
}

// group returns (creating) the group of r: Unresolved when r is zero.
func (s *State) group(r cloud.Resource) *Group {
	if r.IsZero() {
		if s.Unresolved == nil {
			s.Unresolved = &Group{Identities: map[string]string{}}
		}
		return s.Unresolved
	}
	k := r.Key()
	g := s.Groups[k]
	if g == nil {
		g = &Group{Resource: r, Identities: map[string]string{}}
		s.Groups[k] = g
	}
	return g
}

// SortedKeys returns the keys of the resolved groups in a stable order (for logs and tests).
func (s *State) SortedKeys() []cloud.ResourceKey {
	out := make([]cloud.ResourceKey, 0, len(s.Groups))
	for k := range s.Groups {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b cloud.ResourceKey) int { return strings.Compare(a.String(), b.String()) })
	return out
}
