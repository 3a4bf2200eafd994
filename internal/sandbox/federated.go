package sandbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
)

// The federated demo (docs/federation.md): an identity that is on no VM or scale set, whose
// federated identity credential names the sandbox apiserver's issuer and the demo
// ServiceAccount. NMI gets its tokens by exchanging a token of the pod's ServiceAccount with
// Azure AD, so MIC writes nothing to ARM for it.
const (
	// FederatedIdentity is the emulated user-assigned identity and the AzureIdentity's name.
	FederatedIdentity = "federated-demo"
	// FederatedServiceAccount runs the federated demo pod; the credential's subject names it.
	FederatedServiceAccount = "federated-demo"
	// FederatedDemoName is the federated demo Deployment (and its pods' app label).
	FederatedDemoName = "federated-demo"
	// FederatedCredentialName is the demo identity's federated credential.
	FederatedCredentialName = "sandbox-federated-demo"
)

// FederatedSubject is the federated credential subject of a ServiceAccount's tokens.
func FederatedSubject(namespace, serviceAccount string) string {
	return "system:serviceaccount:" + namespace + ":" + serviceAccount
}

// FederatedDemoCredential is the federated identity credential the world gives FederatedIdentity:
// the sandbox issuer, the demo ServiceAccount, Azure AD's default audience.
func FederatedDemoCredential(issuer string) emulator.FederatedCredentialConfig {
	return emulator.FederatedCredentialConfig{
		Name: FederatedCredentialName, Issuer: issuer, Subject: FederatedSubject(DemoNamespace, FederatedServiceAccount),
		Audiences: []string{aadv1.DefaultFederationAudience}, Description: "podidentity sandbox federated demo",
	}
}

// addFederatedDemo gives FederatedIdentity (added by World) its credential for issuer, which is
// known only once the control plane runs.
func addFederatedDemo(cfg *emulator.Config, issuer string) error {
	for i := range cfg.UserAssignedIdentities {
		if cfg.UserAssignedIdentities[i].Name == FederatedIdentity {
			cfg.UserAssignedIdentities[i].FederatedCredentials = append(cfg.UserAssignedIdentities[i].FederatedCredentials,
				FederatedDemoCredential(issuer))
			return nil
		}
	}
	return fmt.Errorf("the emulated world has no identity %s for the federated demo (Options.World removed it?)", FederatedIdentity)
}

// FederatedIdentityObject returns a federated type-0 AzureIdentity (spec.federation with every
// default) for one of the emulated world's user-assigned identities.
func (s *Sandbox) FederatedIdentityObject(namespace, name, azureName string) (*aadv1.AzureIdentity, error) {
	id, err := s.IdentityObject(namespace, name, azureName)
	if err != nil {
		return nil, err
	}
	id.Spec.TenantID = s.Emulator.Config().TenantID
	id.Spec.Federation = &aadv1.Federation{}
	return id, nil
}

// FederatedDemoObjects returns the federated demo in namespace: its ServiceAccount, the federated
// AzureIdentity, a binding by ServiceAccount (no label) and a one-pod Deployment running the same
// unchanged application as the standard demo. The world's credential names DemoNamespace; in
// another namespace add a credential for FederatedSubject(namespace, FederatedServiceAccount).
func (s *Sandbox) FederatedDemoObjects(namespace string) ([]client.Object, error) {
	id, err := s.FederatedIdentityObject(namespace, FederatedIdentity, FederatedIdentity)
	if err != nil {
		return nil, err
	}
	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: FederatedServiceAccount},
	}
	binding := &aadv1.AzureIdentityBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.SchemeGroupVersion.String(), Kind: "AzureIdentityBinding"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: FederatedIdentity + "-binding"},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: FederatedIdentity, ServiceAccountName: FederatedServiceAccount},
	}
	labels := map[string]string{"app": FederatedDemoName}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: FederatedDemoName},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: FederatedServiceAccount,
					Containers:         []corev1.Container{{Name: "demo", Image: "mcr.microsoft.com/oss/azure/aad-pod-identity/demo"}},
				},
			},
		},
	}
	return []client.Object{sa, id, binding, dep}, nil
}

// federatedWait bounds the wait for the federated demo's token: it needs no assignment, so a
// working NMI answers within seconds.
const federatedWait = time.Minute

// waitFederatedDemo waits for the federated demo pod's first token. Failing is reported, not
// fatal: the standard demo is still worth showing.
func (s *Sandbox) waitFederatedDemo(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, federatedWait)
	defer cancel()
	for {
		if r, ok := s.federatedToken(); ok {
			s.progress("federated demo pod %s/%s holds a token of %s (%s after it was created)", r.Namespace, r.Pod, FederatedIdentity,
				resultTime(r).Sub(r.PodCreated).Round(100*time.Millisecond))
			return
		}
		_, next := s.Results()
		select {
		case <-wctx.Done():
			s.progress("federated demo: no token within %s (last answer: %s); see %s/logs (NMI) and `kubectl get events -n %s`",
				federatedWait, s.federatedLastAnswer(), s.Dir, DemoNamespace)
			return
		case <-next:
		case <-time.After(5 * time.Second):
		}
	}
}

func resultTime(r PodResult) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, r.Result.Time)
	return t
}

func (s *Sandbox) isFederatedDemo(r PodResult) bool {
	return r.Namespace == DemoNamespace && strings.HasPrefix(r.Pod, FederatedDemoName+"-")
}

// federatedToken is the federated demo's first successful token result.
func (s *Sandbox) federatedToken() (PodResult, bool) {
	all, _ := s.Results()
	for _, r := range all {
		if s.isFederatedDemo(r) && r.Result.Kind == "token" && r.Result.OK {
			return r, true
		}
	}
	return PodResult{}, false
}

func (s *Sandbox) federatedLastAnswer() string {
	all, _ := s.Results()
	for i := len(all) - 1; i >= 0; i-- {
		if r := all[i]; s.isFederatedDemo(r) {
			return fmt.Sprintf("HTTP %d %s", r.Result.Status, r.Result.Error)
		}
	}
	return "none yet"
}

// federatedSummary says where the federated demo's token came from: Azure AD exchanges of the
// demo ServiceAccount's tokens, and no VM or scale set holding the identity.
func (s *Sandbox) federatedSummary() string {
	info, err := s.Emulator.Identity(FederatedIdentity)
	if err != nil {
		return ""
	}
	var b strings.Builder
	r, ok := s.federatedToken()
	if !ok {
		fmt.Fprintf(&b, "\nFederated demo (%s/%s, ServiceAccount %s): no token yet (last answer: %s)\n",
			DemoNamespace, FederatedDemoName, FederatedServiceAccount, s.federatedLastAnswer())
	} else {
		fmt.Fprintf(&b, "\nFederated demo: pod %s/%s (ServiceAccount %s) got a token of %s (appid %s) %s after it was created\n",
			r.Namespace, r.Pod, FederatedServiceAccount, FederatedIdentity, r.Result.AppID,
			resultTime(r).Sub(r.PodCreated).Round(100*time.Millisecond))
	}
	exchanges := s.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken,
		Identity: info.ClientID, Subject: FederatedSubject(DemoNamespace, FederatedServiceAccount), Status: 200})
	imds := s.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: info.ClientID})
	fmt.Fprintf(&b, "  Azure AD exchanges of its ServiceAccount token: %d; IMDS tokens of %s: %d; VMs and scale sets holding it: %s\n",
		exchanges, FederatedIdentity, imds, s.holders(info.ID))
	return b.String()
}

// holders lists the VMs and scale sets whose identities include id ("none" for a federated one).
func (s *Sandbox) holders(id string) string {
	seen := map[string]bool{}
	var out []string
	for _, n := range s.Nodes {
		res := ScaleSet
		if !strings.Contains(n.ProviderID, "virtualMachineScaleSets/") {
			res = n.HostKey
		}
		if seen[res] {
			continue
		}
		seen[res] = true
		ids, err := s.Emulator.AssignedIdentities(res)
		if err != nil {
			continue
		}
		for _, a := range ids {
			if strings.EqualFold(a, id) {
				out = append(out, res)
			}
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
