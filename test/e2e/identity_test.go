package e2e

import (
	"context"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// The sandbox's own demo: every demo pod holds a token for the demo identity.
func TestDemoPodsHoldTokensForTheDemoIdentity(t *testing.T) {
	t.Parallel()
	want, err := sb.Emulator.Identity(sandbox.Identities[0])
	if err != nil {
		t.Fatal(err)
	}
	pods, err := sb.Client.CoreV1().Pods(sandbox.DemoNamespace).List(ctxFor(t), metav1.ListOptions{LabelSelector: "app=" + sandbox.DemoName})
	if err != nil || len(pods.Items) != sb.Opts.DemoReplicas {
		t.Fatalf("want %d demo pods, got %d (%v)", sb.Opts.DemoReplicas, len(pods.Items), err)
	}
	for _, p := range pods.Items {
		r := firstToken(t, p.Namespace, p.Name)
		if !strings.EqualFold(r.ClientID, want.ClientID) || !strings.EqualFold(r.MIRID, want.ID) || !armToken(r) {
			t.Errorf("demo pod %s: got %s, want a token for %s", p.Name, r.Summary(), want.ID)
		}
	}
}

// Upstream "single identity": a pod bound to one identity gets a token for it, its
// AzureAssignedIdentity is Assigned, and the identity is on the node's VM/VMSS.
func TestPodGetsTokenForItsIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "single")
	identity(t, ns, "single", info, nil)
	binding(t, ns, "single-binding", "single", ns)
	pod(t, ns, "app", podOpts{Selector: ns, Restart: corev1.RestartPolicyNever}, "sh", "-c", "az login --identity && sleep infinity")

	r := firstToken(t, ns, "app")
	if !strings.EqualFold(r.ClientID, info.ClientID) || !strings.EqualFold(r.MIRID, info.ID) || !armToken(r) {
		t.Fatalf("got %s, want an ARM token for %s", r.Summary(), info.ID)
	}
	got := waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
	if got[0].Name != "app-"+ns+"-single" || got[0].Spec.AzureIdentityRef == nil || got[0].Spec.AzureIdentityRef.Name != "single" {
		t.Errorf("AzureAssignedIdentity %s does not follow the upstream naming <pod>-<ns>-<identity> or lacks the identity", got[0].Name)
	}
	node := nodeOf(t, ns, "app")
	if !assigned(t, nodeResource(node), info.ID) {
		t.Errorf("identity %s is not on %s", info.ID, nodeResource(node))
	}
}

func nodeOf(t *testing.T, ns, name string) *sandbox.Node {
	t.Helper()
	p, err := sb.Client.CoreV1().Pods(ns).Get(ctxFor(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading pod %s/%s: %v", ns, name, err)
	}
	for _, n := range sb.Nodes {
		if n.Name == p.Spec.NodeName {
			return n
		}
	}
	t.Fatalf("pod %s/%s is on unknown node %q", ns, name, p.Spec.NodeName)
	return nil
}

// Best Practices "a pod using multiple AzureIdentities": several identities on one selector;
// the pod chooses by client ID, by resource ID, or through AZURE_CLIENT_ID; an identity it is
// not bound to is refused.
func TestSeveralIdentitiesOnOneSelector(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	one, two, other := azureIdentity(t, "multi-1"), azureIdentity(t, "multi-2"), azureIdentity(t, "not-bound")
	identity(t, ns, "id-1", one, nil)
	identity(t, ns, "id-2", two, nil)
	binding(t, ns, "id-1-binding", "id-1", ns)
	binding(t, ns, "id-2-binding", "id-2", ns)
	node := sb.Nodes[0].Name // one node, so that every pod shares one VMSS identity set

	pod(t, ns, "by-client-id", podOpts{Selector: ns, Node: node}, "az", "login", "--identity", "-u", two.ClientID, "--allow-no-subscriptions")
	pod(t, ns, "by-resource-id", podOpts{Selector: ns, Node: node}, "az", "login", "--identity", "-u", one.ID)
	pod(t, ns, "by-env", podOpts{Selector: ns, Node: node, Env: map[string]string{"AZURE_CLIENT_ID": one.ClientID}},
		"az", "account", "get-access-token", "--resource", "https://vault.azure.net")
	pod(t, ns, "not-bound", podOpts{Selector: ns, Node: node}, "az", "login", "--identity", "-u", other.ClientID)

	for _, c := range []struct {
		pod, want, aud string
	}{{"by-client-id", two.ClientID, probeclient.ARMResource}, {"by-resource-id", one.ClientID, probeclient.ARMResource}, {"by-env", one.ClientID, "https://vault.azure.net"}} {
		r := firstToken(t, ns, c.pod)
		if !strings.EqualFold(r.ClientID, c.want) || strings.TrimSuffix(r.Audience, "/") != strings.TrimSuffix(c.aud, "/") {
			t.Errorf("pod %s: got %s, want identity %s for %s", c.pod, r.Summary(), c.want, c.aud)
		}
		if p := finalPhase(t, ns, c.pod); p.Status.Phase != corev1.PodSucceeded {
			t.Errorf("pod %s ended %s, want Succeeded", c.pod, p.Status.Phase)
		}
	}
	r := result(t, ns, "not-bound", "", func(r probeclient.Result) bool { return r.Kind == "token" })
	if r.OK || r.Status != 403 {
		t.Errorf("a pod asking for an identity it is not bound to: got %s, want HTTP 403", r.Summary())
	}
	if p := finalPhase(t, ns, "not-bound"); p.Status.Phase != corev1.PodFailed {
		t.Errorf("pod not-bound ended %s, want Failed (az login exits 1)", p.Status.Phase)
	}
}

// Security: a pod with no binding gets no token at all, whatever it asks for.
func TestPodWithoutBindingGetsNothing(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	demo, err := sb.Emulator.Identity(sandbox.Identities[0])
	if err != nil {
		t.Fatal(err)
	}
	// The demo identity is on every node (the demo Deployment uses it), so only NMI stands
	// between this pod and a token.
	node := nodeOf(t, sandbox.DemoNamespace, demoPod(t)).Name
	pod(t, ns, "unlabelled", podOpts{Node: node}, "az", "login", "--identity")
	pod(t, ns, "asks-by-id", podOpts{Node: node}, "az", "login", "--identity", "-u", demo.ClientID)
	pod(t, ns, "wrong-label", podOpts{Node: node, Selector: "no-such-binding"}, "az", "login", "--identity", "-u", demo.ID)
	for _, name := range []string{"unlabelled", "asks-by-id", "wrong-label"} {
		r := result(t, ns, name, "", func(r probeclient.Result) bool { return r.Kind == "token" })
		if r.OK {
			t.Errorf("pod %s without a binding got a token: %s", name, r.Summary())
		}
		p := finalPhase(t, ns, name)
		if p.Status.Phase != corev1.PodFailed || p.Status.ContainerStatuses[0].State.Terminated.ExitCode != 1 {
			t.Errorf("pod %s: phase %s, want Failed with exit code 1", name, p.Status.Phase)
		}
	}
}

func demoPod(t *testing.T) string {
	t.Helper()
	pods, err := sb.Client.CoreV1().Pods(sandbox.DemoNamespace).List(ctxFor(t), metav1.ListOptions{LabelSelector: "app=" + sandbox.DemoName})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("no demo pod: %v", err)
	}
	return pods.Items[0].Name
}

// A Job's pod gets its token, the Job completes, and the finished pod releases the identity:
// its AzureAssignedIdentity goes and the identity leaves the VM/VMSS (upstream kept it, #637).
func TestJobCompletesAndReleasesIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "job")
	identity(t, ns, "job-id", info, nil)
	binding(t, ns, "job-binding", "job-id", ns)
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "once"},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To(int32(4)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{aadv1.PodLabelKey: ns}},
				Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers:    []corev1.Container{{Name: "job", Image: "mcr.microsoft.com/azure-cli", Command: []string{"az", "login", "--identity", "--allow-no-subscriptions"}}},
				},
			},
		},
	}
	if _, err := sb.Client.BatchV1().Jobs(ns).Create(ctxFor(t), job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Job "+ns+"/once to complete", func(ctx context.Context) (bool, error) {
		j, err := sb.Client.BatchV1().Jobs(ns).Get(ctx, "once", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return j.Status.Succeeded == 1, nil
	})
	pods, err := sb.Client.CoreV1().Pods(ns).List(ctxFor(t), metav1.ListOptions{LabelSelector: "job-name=once"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("job pods: %v", err)
	}
	var node *sandbox.Node
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded {
			r := firstToken(t, ns, p.Name)
			if !strings.EqualFold(r.ClientID, info.ClientID) {
				t.Errorf("job pod got %s, want %s", r.Summary(), info.ClientID)
			}
			node = nodeOf(t, ns, p.Name)
		}
	}
	if node == nil {
		t.Fatal("no succeeded job pod")
	}
	waitAAIs(t, ns, 0, "")
	waitFor(t, "identity released from "+nodeResource(node), func(context.Context) (bool, error) {
		return !assigned(t, nodeResource(node), info.ID), nil
	})
}

// Best Practices "pods using unauthorized AzureIdentities": an identity marked namespaced serves
// only pods of its own namespace, even when a pod elsewhere carries the right label.
func TestNamespacedIdentityRefusedFromOtherNamespace(t *testing.T) {
	t.Parallel()
	home, other := namespace(t), namespace(t)
	info := azureIdentity(t, "namespaced")
	identity(t, home, "ns-id", info, map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced})
	binding(t, home, "ns-binding", "ns-id", home)
	node := sb.Nodes[0].Name
	pod(t, home, "insider", podOpts{Selector: home, Node: node}, "sh", "-c", "az login --identity && sleep infinity")
	pod(t, other, "intruder", podOpts{Selector: home, Node: node}, "az", "login", "--identity", "-u", info.ClientID)

	if r := firstToken(t, home, "insider"); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("pod in the identity's namespace: got %s", r.Summary())
	}
	r := result(t, other, "intruder", "", func(r probeclient.Result) bool { return r.Kind == "token" })
	if r.OK {
		t.Errorf("pod in another namespace got the namespaced identity: %s", r.Summary())
	}
	if n := len(aais(ctxFor(t), t, other)); n != 0 {
		t.Errorf("pod in another namespace has %d AzureAssignedIdentities, want 0", n)
	}
}

// An init container running `az login --identity` (the Best Practices way to wait for the
// assignment) completes, then the app container gets its token too.
func TestInitContainerWaitsForIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "init")
	identity(t, ns, "init-id", info, nil)
	binding(t, ns, "init-binding", "init-id", ns)
	pod(t, ns, "app", podOpts{Selector: ns, Init: []string{"az", "login", "--identity", "--allow-no-subscriptions", "--debug"}},
		"az", "login", "--identity")
	for _, c := range []string{"init", "app"} {
		r := result(t, ns, "app", c, func(r probeclient.Result) bool { return r.Kind == "token" })
		if !r.OK || !strings.EqualFold(r.ClientID, info.ClientID) {
			t.Errorf("container %s: %s", c, r.Summary())
		}
	}
	p := finalPhase(t, ns, "app")
	if p.Status.Phase != corev1.PodSucceeded || p.Status.InitContainerStatuses[0].State.Terminated == nil ||
		p.Status.InitContainerStatuses[0].State.Terminated.ExitCode != 0 {
		t.Errorf("pod ended %s, init container %+v", p.Status.Phase, p.Status.InitContainerStatuses)
	}
}

// Best Practices "retry on token retrieval": the first token arrives after the emulated
// assignment, and the client needed no retry beyond what NMI's wait absorbed... or a few SDK
// retries at most.
func TestFirstTokenWaitsForAssignment(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "wait")
	identity(t, ns, "wait-id", info, nil)
	binding(t, ns, "wait-binding", "wait-id", ns)
	// The pod starts before MIC can have assigned anything: NMI must hold its request.
	pod(t, ns, "eager", podOpts{Selector: ns}, "az", "login", "--identity")
	r := firstToken(t, ns, "eager")
	if r.Attempts > 5 {
		t.Errorf("token after %d attempts: the SDK's retries (5) would have given up", r.Attempts)
	}
	if p := finalPhase(t, ns, "eager"); p.Status.Phase != corev1.PodSucceeded || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("pod ended %s after %d restarts, want Succeeded without restarts", p.Status.Phase, p.Status.ContainerStatuses[0].RestartCount)
	}
	t.Logf("first token after %d attempt(s), %dms after the first request", r.Attempts, r.ElapsedMS)
}

// "service principal identity": a type-1 AzureIdentity whose secret lives in a Kubernetes
// Secret; NMI gets the token from (emulated) Azure AD, MIC assigns nothing in ARM.
func TestServicePrincipalIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sp-secret"},
		StringData: map[string]string{"clientSecret": spSecret},
	}
	if _, err := sb.Client.CoreV1().Secrets(ns).Create(ctxFor(t), secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: sb.Emulator.Config().TenantID,
			// A custom cloud's Azure AD, named per identity as upstream allows.
			ADEndpoint:     sb.Emulator.AADURL() + "/",
			ClientPassword: corev1.SecretReference{Name: "sp-secret", Namespace: ns},
		},
	}
	if err := crc(t).Create(ctxFor(t), id); err != nil {
		t.Fatal(err)
	}
	binding(t, ns, "sp-binding", "sp", ns)
	pod(t, ns, "app", podOpts{Selector: ns}, "az", "login", "--identity")
	r := firstToken(t, ns, "app")
	if !strings.EqualFold(r.AppID, spAppID) || !armToken(r) {
		t.Errorf("got %s (appid %s), want an ARM token for application %s", r.Summary(), r.AppID, spAppID)
	}
	waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
}
