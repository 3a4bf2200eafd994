package chart_test

import (
	"fmt"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"

	"github.com/podidentity/podidentity/internal/testenv"
)

// can asks the apiserver whether the ServiceAccount may do verb on resource (group/resource) in
// namespace ("" for cluster scope), on the object called name ("" for any): the same question
// `kubectl auth can-i --as` asks.
func can(t *testing.T, saNamespace, sa, verb, group, resource, namespace, name string) bool {
	t.Helper()
	return canUser(t, fmt.Sprintf("system:serviceaccount:%s:%s", saNamespace, sa),
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + saNamespace}, verb, group, resource, namespace, name)
}

func canUser(t *testing.T, user string, groups []string, verb, group, resource, namespace, name string) bool {
	t.Helper()
	// "serviceaccounts/token" is the token subresource of ServiceAccounts.
	resource, sub, _ := strings.Cut(resource, "/")
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user, Groups: append(groups, "system:authenticated"),
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: verb, Group: group, Resource: resource, Subresource: sub, Name: name},
	}}
	if err := env.Client.Create(testenv.Context(t), sar); err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return sar.Status.Allowed
}

type access struct {
	sa, verb, group, resource, namespace string
	want                                 bool
	name                                 string // "" for any object
}

const aad = "aadpodidentity.k8s.io"

// secretAccess is where NMI may read Secrets in each scenario: none by default, the listed
// namespaces, or every namespace with rbac.secretNamespaces=["*"].
func secretAccess(scenario, nmi, own, listed, other string) []access {
	var out []access
	// NMI watches each service principal's Secret by name: get, list and watch go together.
	for _, verb := range []string{"get", "list", "watch"} {
		switch scenario {
		case "everything":
			out = append(out, access{nmi, verb, "", "secrets", other, true, ""}, access{nmi, verb, "", "secrets", "", true, ""})
		case "namespaced":
			out = append(out, access{nmi, verb, "", "secrets", listed, true, ""}, access{nmi, verb, "", "secrets", other, false, ""},
				access{nmi, verb, "", "secrets", "", false, ""})
		default: // including "default" and "upstream-secrets": allowAccessToSecrets alone grants nothing
			out = append(out, access{nmi, verb, "", "secrets", other, false, ""}, access{nmi, verb, "", "secrets", own, false, ""},
				access{nmi, verb, "", "secrets", "", false, ""})
		}
	}
	return out
}

func TestRBACGranted(t *testing.T) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			ns := env.Namespace(t)
			other := env.Namespace(t)
			secretNS := env.Namespace(t)
			vals := readValues(t, s.file)
			if s.name == "namespaced" {
				vals["rbac"].(map[string]any)["secretNamespaces"] = []any{secretNS}
			}
			a := newApplier(t)
			for _, o := range render(t, ns, ns, vals) {
				switch o.Kind {
				case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
					a.apply(t, o, false)
				}
			}
			mic, nmi := ns+"-podidentity-mic", ns+"-podidentity-nmi"
			managed := s.name == "managed"
			checks := []access{
				// NMI: read-only, and only what it watches, plus the events that explain refusals.
				{nmi, "watch", "", "pods", "", true, ""},
				{nmi, "list", aad, "azureidentities", "", true, ""},
				{nmi, "watch", aad, "azureidentitybindings", "", true, ""},
				{nmi, "watch", aad, "azurepodidentityexceptions", "", true, ""},
				{nmi, "watch", aad, "azureassignedidentities", "", !managed, ""},
				{nmi, "create", "", "events", other, true, ""},
				{nmi, "patch", "", "events", other, true, ""},
				{nmi, "create", "events.k8s.io", "events", other, true, ""},
				{nmi, "patch", "events.k8s.io", "events", other, true, ""},
				{nmi, "delete", "", "events", other, false, ""},
				{nmi, "create", aad, "azureassignedidentities", other, false, ""},
				{nmi, "update", "", "pods", other, false, ""},
				{nmi, "list", "", "nodes", "", false, ""},
				{nmi, "create", aad, "azureidentities", other, false, ""},
				// Federated identities (nmi.federation.enabled, on by default): tokens of any
				// ServiceAccount, which the TokenRequest admission policy narrows
				// (tokenrequest_test.go); nothing else on ServiceAccounts.
				{nmi, "create", "", "serviceaccounts/token", other, true, ""},
				{nmi, "get", "", "serviceaccounts", other, false, ""},
				// nmi.federation.honorWorkloadIdentityAnnotations (everything.yaml): their metadata.
				{nmi, "watch", "", "serviceaccounts", "", s.name == "everything", ""},
				{nmi, "create", "", "serviceaccounts", other, false, ""},
			}
			checks = append(checks, secretAccess(s.name, nmi, ns, secretNS, other)...)
			if !managed {
				lease := "aad-pod-identity-mic" // the chart's and the binary's default
				checks = append(checks,
					access{mic, "list", "", "pods", "", true, ""},
					access{mic, "watch", "", "nodes", "", true, ""},
					access{mic, "watch", aad, "azureidentities", "", true, ""},
					access{mic, "watch", aad, "azureidentitybindings", "", true, ""},
					access{mic, "create", aad, "azureassignedidentities", other, true, ""},
					access{mic, "patch", aad, "azureassignedidentities", other, true, ""},
					access{mic, "delete", aad, "azureassignedidentities", other, true, ""},
					access{mic, "create", "", "events", other, true, ""},
					access{mic, "create", "events.k8s.io", "events", other, true, ""},
					access{mic, "create", "", "configmaps", ns, true, ""},
					access{mic, "update", "", "configmaps", ns, true, ""},
					access{mic, "get", "", "configmaps", ns, true, ""},
					access{mic, "create", "coordination.k8s.io", "leases", ns, true, ""},
					access{mic, "get", "coordination.k8s.io", "leases", ns, true, lease},
					access{mic, "update", "coordination.k8s.io", "leases", ns, true, lease},
					// Nothing beyond that: MIC never patches or deletes its ownership records, and
					// holds one Lease only.
					access{mic, "delete", "", "configmaps", ns, false, ""},
					access{mic, "list", "", "configmaps", ns, false, ""},
					access{mic, "patch", "", "configmaps", ns, false, ""},
					access{mic, "create", "", "configmaps", other, false, ""},
					access{mic, "update", "coordination.k8s.io", "leases", ns, false, "another-lease"},
					access{mic, "delete", "coordination.k8s.io", "leases", ns, false, lease},
					access{mic, "create", "coordination.k8s.io", "leases", other, false, ""},
					access{mic, "get", "", "secrets", ns, false, ""},
					access{mic, "update", aad, "azureidentities", other, false, ""},
					access{mic, "delete", "", "pods", other, false, ""},
					access{mic, "update", "", "nodes", "", false, ""},
					access{mic, "create", "", "serviceaccounts/token", other, false, ""},
				)
			}
			// The apiserver's RBAC authorizer reads from an informer cache, so fresh bindings take a
			// moment to count. Wait until every grant the chart must make is visible (or the test
			// context ends, which then reports the missing grants below); denials are judged after.
			ctx := testenv.Context(t)
			for ctx.Err() == nil {
				visible := true
				for _, c := range checks {
					if c.want && !can(t, ns, c.sa, c.verb, c.group, c.resource, c.namespace, c.name) {
						visible = false
						break
					}
				}
				if visible {
					break
				}
			}
			for _, c := range checks {
				if got := can(t, ns, c.sa, c.verb, c.group, c.resource, c.namespace, c.name); got != c.want {
					t.Errorf("can %s %s %s.%s %q in %q: %v, want %v", c.sa, c.verb, c.resource, c.group, c.name, c.namespace, got, c.want)
				}
			}
		})
	}
}
