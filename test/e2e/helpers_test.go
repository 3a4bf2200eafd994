package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// bound is the longest any wait in this suite may take: a safety net so that a broken build
// fails instead of hanging, never a timing assertion (everything here takes seconds).
const bound = 3 * time.Minute

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return ctx
}

func crc(t *testing.T) client.Client {
	t.Helper()
	c, err := sb.CRClient()
	if err != nil {
		t.Fatalf("building a client: %v", err)
	}
	return c
}

func suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// namespace creates a Kubernetes namespace for one test and deletes it afterwards.
func namespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.TrimRight(name, "-") + "-" + suffix()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := sb.Client.CoreV1().Namespaces().Create(ctxFor(t), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	// The ServiceAccount admission plugin refuses pods until the namespace's default
	// ServiceAccount exists (the controller-manager makes it).
	if err := wait.PollUntilContextTimeout(ctxFor(t), 100*time.Millisecond, bound, true, func(ctx context.Context) (bool, error) {
		_, err := sb.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("namespace %s never got its default ServiceAccount: %v", name, err)
	}
	t.Cleanup(func() {
		_ = sb.Client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// azureIdentity creates a user-assigned identity in the emulated Azure, named uniquely for the
// test, and returns it.
func azureIdentity(t *testing.T, base string) emulator.IdentityInfo {
	t.Helper()
	info, err := sb.Emulator.CreateIdentity(emulator.IdentityConfig{Name: base + "-" + suffix()})
	if err != nil {
		t.Fatalf("creating Azure identity %s: %v", base, err)
	}
	return info
}

// identity creates an AzureIdentity (type 0) for info in ns.
func identity(t *testing.T, ns, name string, info emulator.IdentityInfo, annotations map[string]string) *aadv1.AzureIdentity {
	t.Helper()
	id := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: info.ID, ClientID: info.ClientID},
	}
	if err := crc(t).Create(ctxFor(t), id); err != nil {
		t.Fatalf("creating AzureIdentity %s/%s: %v", ns, name, err)
	}
	return id
}

// binding creates an AzureIdentityBinding of identity to selector in ns.
func binding(t *testing.T, ns, name, identity, selector string) *aadv1.AzureIdentityBinding {
	t.Helper()
	b := &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
	if err := crc(t).Create(ctxFor(t), b); err != nil {
		t.Fatalf("creating AzureIdentityBinding %s/%s: %v", ns, name, err)
	}
	return b
}

// podOpts describe a test pod.
type podOpts struct {
	Selector string
	Node     string
	IP       string
	Env      map[string]string
	Labels   map[string]string
	Init     []string
	Host     bool
	Restart  corev1.RestartPolicy
}

// pod creates a pod whose one container runs cmd (see internal/probeclient for the commands).
func pod(t *testing.T, ns, name string, o podOpts, cmd ...string) *corev1.Pod {
	t.Helper()
	labels := map[string]string{}
	for k, v := range o.Labels {
		labels[k] = v
	}
	if o.Selector != "" {
		labels[aadv1.PodLabelKey] = o.Selector
	}
	var env []corev1.EnvVar
	for k, v := range o.Env {
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	if o.Restart == "" {
		o.Restart = corev1.RestartPolicyNever
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy: o.Restart, NodeName: o.Node, HostNetwork: o.Host,
			TerminationGracePeriodSeconds: ptr.To(int64(5)),
			Containers:                    []corev1.Container{{Name: "app", Image: "mcr.microsoft.com/azure-cli", Command: cmd, Env: env}},
		},
	}
	if o.IP != "" {
		p.Annotations = map[string]string{"sandbox.podidentity.io/pod-ip": o.IP}
	}
	if len(o.Init) > 0 {
		p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "mcr.microsoft.com/azure-cli", Command: o.Init}}
	}
	got, err := sb.Client.CoreV1().Pods(ns).Create(ctxFor(t), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return got
}

// result waits for the first probe-client result of a pod's container that matches want.
func result(t *testing.T, ns, podName, container string, want func(probeclient.Result) bool) probeclient.Result {
	t.Helper()
	ctx := ctxFor(t)
	for {
		all, next := sb.Results()
		for _, r := range all {
			if r.Namespace == ns && r.Pod == podName && (container == "" || r.Container == container) && want(r.Result) {
				return r.Result
			}
		}
		select {
		case <-next:
		case <-ctx.Done():
			t.Fatalf("pod %s/%s (container %q) never produced the expected result; its results: %v", ns, podName, container, resultsOf(ns, podName))
		}
	}
}

func resultsOf(ns, podName string) []string {
	all, _ := sb.Results()
	var out []string
	for _, r := range all {
		if r.Namespace == ns && r.Pod == podName {
			out = append(out, r.Container+": "+r.Result.Summary())
		}
	}
	return out
}

func tokenOK(r probeclient.Result) bool { return r.Kind == "token" && r.OK }

// firstToken waits for the pod's first token result and returns it, failing the test when that
// result is a failure.
func firstToken(t *testing.T, ns, podName string) probeclient.Result {
	t.Helper()
	r := result(t, ns, podName, "", func(r probeclient.Result) bool { return r.Kind == "token" })
	if !r.OK {
		t.Fatalf("pod %s/%s got no token: %s", ns, podName, r.Summary())
	}
	return r
}

// phase waits until the pod reaches a terminal phase and returns it.
func finalPhase(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(ctxFor(t), 200*time.Millisecond, bound, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = sb.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s did not finish: phase %v", ns, name, phaseOf(p))
	}
	return p
}

func phaseOf(p *corev1.Pod) string {
	if p == nil {
		return "<none>"
	}
	return string(p.Status.Phase)
}

// waitFor polls cond until it holds (bounded by the suite's safety net).
func waitFor(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(ctxFor(t), 200*time.Millisecond, bound, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		last = err
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, last)
	}
}

// aais lists the AzureAssignedIdentities of pods in podNS.
func aais(ctx context.Context, t *testing.T, podNS string) []aadv1.AzureAssignedIdentity {
	var l aadv1.AzureAssignedIdentityList
	if err := crc(t).List(ctx, &l); err != nil {
		return nil
	}
	var out []aadv1.AzureAssignedIdentity
	for _, a := range l.Items {
		if a.Spec.PodNamespace == podNS {
			out = append(out, a)
		}
	}
	return out
}

// waitAAIs waits until pods of podNS have exactly n AzureAssignedIdentities, all in state want
// (when want is not empty).
func waitAAIs(t *testing.T, podNS string, n int, want aadv1.AssignedIdentityState) []aadv1.AzureAssignedIdentity {
	t.Helper()
	var got []aadv1.AzureAssignedIdentity
	waitFor(t, fmt.Sprintf("%d AzureAssignedIdentities %s for pods in %s", n, want, podNS), func(ctx context.Context) (bool, error) {
		got = aais(ctx, t, podNS)
		if len(got) != n {
			return false, fmt.Errorf("have %d", len(got))
		}
		for _, a := range got {
			if want != "" && a.Status.Status != want {
				return false, fmt.Errorf("%s is %s", a.Name, a.Status.Status)
			}
		}
		return true, nil
	})
	return got
}

// assigned reports whether an identity is on a VM/VMSS in the emulated ARM.
func assigned(t *testing.T, resource, identityID string) bool {
	t.Helper()
	ids, err := sb.Emulator.AssignedIdentities(resource)
	if err != nil {
		t.Fatalf("reading identities of %s: %v", resource, err)
	}
	for _, id := range ids {
		if strings.EqualFold(id, identityID) {
			return true
		}
	}
	return false
}

// waitIMDSServes waits until the node's IMDS issues tokens for clientID. Like the real IMDS, the
// emulator answers "Identity not found" for a short while after an assignment, and a client that
// does not retry 400s (as the Azure SDKs do not) would fail in that window. The handler is called
// in process: no network is involved.
func waitIMDSServes(t *testing.T, n *sandbox.Node, clientID string) {
	t.Helper()
	h, err := sb.Emulator.IMDSHandler(n.HostKey)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "IMDS of "+n.Name+" serving "+clientID, func(context.Context) (bool, error) {
		req := httptest.NewRequest(http.MethodGet, "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id="+clientID, nil)
		req.Header.Set("Metadata", "true")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code == http.StatusOK, nil
	})
}

// nodeResource is the emulator resource (VM name or VMSS name) behind a node.
func nodeResource(n *sandbox.Node) string {
	if i := strings.Index(n.ProviderID, "virtualMachineScaleSets/"); i >= 0 {
		rest := n.ProviderID[i+len("virtualMachineScaleSets/"):]
		return rest[:strings.Index(rest, "/")]
	}
	return n.HostKey
}

// deletePod deletes a pod and waits until it is gone.
func deletePod(t *testing.T, ns, name string) {
	t.Helper()
	if err := sb.Client.CoreV1().Pods(ns).Delete(ctxFor(t), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("deleting pod %s/%s: %v", ns, name, err)
	}
	waitFor(t, "pod "+ns+"/"+name+" to be gone", func(ctx context.Context) (bool, error) {
		_, err := sb.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

func armToken(r probeclient.Result) bool {
	return strings.TrimSuffix(r.Audience, "/") == strings.TrimSuffix(probeclient.ARMResource, "/")
}
