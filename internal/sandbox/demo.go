package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Demo objects, as a user would apply them (upstream's deploy/demo shapes).
const (
	DemoNamespace = "default"
	DemoSelector  = "demo"
	DemoName      = "demo"
)

// IdentityObject returns a type-0 AzureIdentity for one of the emulated world's user-assigned
// identities, with its real resource ID and client ID.
func (s *Sandbox) IdentityObject(namespace, name, azureName string) (*aadv1.AzureIdentity, error) {
	info, err := s.Emulator.Identity(azureName)
	if err != nil {
		return nil, fmt.Errorf("identity %s is not in the emulated world: %w", azureName, err)
	}
	return &aadv1.AzureIdentity{
		TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.SchemeGroupVersion.String(), Kind: "AzureIdentity"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: info.ID, ClientID: info.ClientID},
	}, nil
}

func (s *Sandbox) demoObjects() ([]client.Object, error) {
	id, err := s.IdentityObject(DemoNamespace, Identities[0], Identities[0])
	if err != nil {
		return nil, err
	}
	binding := &aadv1.AzureIdentityBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: aadv1.SchemeGroupVersion.String(), Kind: "AzureIdentityBinding"},
		ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: Identities[0] + "-binding"},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: Identities[0], Selector: DemoSelector},
	}
	labels := map[string]string{"app": DemoName, aadv1.PodLabelKey: DemoSelector}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: DemoName},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(s.Opts.DemoReplicas)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": DemoName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					// An application using an Azure SDK: one ARM token at start, refreshed
					// periodically (see internal/probeclient).
					Containers: []corev1.Container{{Name: "demo", Image: "mcr.microsoft.com/oss/azure/aad-pod-identity/demo"}},
				},
			},
		},
	}
	return []client.Object{id, binding, dep}, nil
}

// RunDemo applies the demo identity, binding and Deployment (also written to demo.yaml in the
// run directory) and waits until every demo pod holds a token.
func (s *Sandbox) RunDemo(ctx context.Context) error {
	if !s.Opts.Demo {
		return nil
	}
	objs, err := s.demoObjects()
	if err != nil {
		return err
	}
	if s.Opts.FederatedDemo {
		fed, err := s.FederatedDemoObjects(DemoNamespace)
		if err != nil {
			return err
		}
		objs = append(objs, fed...)
	}
	var docs []string
	for _, o := range objs {
		b, _ := yaml.Marshal(o)
		docs = append(docs, string(b))
	}
	manifest := filepath.Join(s.Dir, "demo.yaml")
	if err := os.WriteFile(manifest, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
		return err
	}
	c, err := s.CRClient()
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("applying demo %T %s: %w", o, o.GetName(), err)
		}
	}
	s.progress("demo applied (%s): AzureIdentity %s, binding selector %q, Deployment %s with %d pods; waiting for their tokens",
		manifest, Identities[0], DemoSelector, DemoName, s.Opts.DemoReplicas)
	if s.Opts.FederatedDemo {
		s.progress("federated demo applied: AzureIdentity %s (spec.federation), binding to ServiceAccount %s, Deployment %s with 1 pod",
			FederatedIdentity, FederatedServiceAccount, FederatedDemoName)
	}
	wctx, cancel := context.WithTimeout(ctx, s.Opts.StartTimeout)
	defer cancel()
	for {
		got := s.demoTokens()
		if len(got) >= s.Opts.DemoReplicas {
			s.progress("all %d demo pods hold tokens", len(got))
			if s.Opts.FederatedDemo {
				s.waitFederatedDemo(ctx)
			}
			return nil
		}
		_, next := s.Results()
		// Re-check after the next result, or after a while (pods may be replaced).
		select {
		case <-wctx.Done():
			return fmt.Errorf("demo pods did not all get tokens within %s (%d of %d did): see %s/logs and `kubectl get events`: %w",
				s.Opts.StartTimeout, len(got), s.Opts.DemoReplicas, s.Dir, wctx.Err())
		case <-next:
		case <-time.After(5 * time.Second):
		}
	}
}

// demoTokens returns the first successful token result of each demo pod.
func (s *Sandbox) demoTokens() map[string]PodResult {
	all, _ := s.Results()
	out := map[string]PodResult{}
	for _, r := range all {
		if r.Namespace == DemoNamespace && strings.HasPrefix(r.Pod, DemoName+"-") && r.Result.Kind == "token" && r.Result.OK {
			if _, ok := out[r.Pod]; !ok {
				out[r.Pod] = r
			}
		}
	}
	return out
}

// Summary describes the running sandbox and the demo's tokens, and how to continue.
func (s *Sandbox) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\npodidentity sandbox is running (started in %s)\n\n", s.Ready.Sub(s.Started).Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tPROVIDER\tNAMESPACE\tNMI")
	for _, n := range s.Nodes {
		kind := "VM " + n.HostKey
		if i := strings.Index(n.ProviderID, "virtualMachineScaleSets/"); i >= 0 {
			kind = "VMSS " + n.ProviderID[i+len("virtualMachineScaleSets/"):]
		}
		nmi := "no"
		if n.NMI != nil {
			nmi = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.Name, kind, n.Net.NS, nmi)
	}
	tw.Flush()
	if toks := s.demoTokens(); len(toks) > 0 {
		names := make([]string, 0, len(toks))
		for k := range toks {
			names = append(names, k)
		}
		sort.Strings(names)
		idName := map[string]string{}
		for _, n := range append(append([]string{}, Identities...), FederatedIdentity) {
			if info, err := s.Emulator.Identity(n); err == nil {
				idName[strings.ToLower(info.ClientID)] = n
			}
		}
		b.WriteString("\n")
		tw = tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  POD\tNODE\tIDENTITY\taud\tappid\txms_mirid\texp\tFIRST TOKEN AFTER")
		for _, name := range names {
			r := toks[name]
			t, _ := time.Parse(time.RFC3339Nano, r.Result.Time)
			mirid := r.Result.MIRID
			if i := strings.LastIndex(mirid, "/providers/"); i >= 0 {
				mirid = "…" + mirid[i:]
			}
			fmt.Fprintf(tw, "  %s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Namespace, r.Pod, r.Node,
				orDefault(idName[strings.ToLower(r.Result.ClientID)], r.Result.ClientID), r.Result.Audience, r.Result.AppID, mirid,
				time.Unix(r.Result.ExpiresOn, 0).UTC().Format(time.RFC3339), t.Sub(r.PodCreated).Round(100*time.Millisecond))
		}
		tw.Flush()
	}
	if s.Opts.FederatedDemo {
		b.WriteString(s.federatedSummary())
	}
	fmt.Fprintf(&b, `
Continue with:
  export KUBECONFIG=%s PATH=%s:$PATH
  kubectl get pods -o wide
  kubectl get azureassignedidentities -A
  kubectl get events --field-selector reason=TokenAcquired
  curl -s %s/counters?service=arm        # emulated Azure: calls by operation (admin API)
  curl -s %s/assignments?resource=%s
Demo manifests: %s/demo.yaml   Logs: %s/logs (MIC, NMI, control plane), %s/pods (containers)
Press Ctrl-C to stop and remove everything (or run `+"`make sandbox-down`"+` from another terminal).
`, s.Kubeconfig, s.ControlPlaneDir, s.Emulator.AdminURL(), s.Emulator.AdminURL(), ScaleSet, s.Dir, s.Dir, s.Dir)
	return b.String()
}
