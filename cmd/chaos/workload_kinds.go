package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox/agent"
)

// The workload's further kinds (issue #16): Jobs and a CronJob (bound pods that run to
// completion), identities edited in place, deleted and re-created, a service-principal identity,
// and pod IPs reused on purpose.
const (
	azStdAlt    = "chaos-std-alt"                        // std-b's client and resource ID are switched to it and back
	spAppID     = "c4a05e00-5bd1-4e99-8000-000000000001" // a GUID: the CRD requires one
	spSecret    = "chaos-sp-secret"
	spSecretRef = "chaos-sp"
	maxJobs     = 4
	// jobTTL lets the TTL controller remove finished Jobs (and their pods) during the run.
	jobTTL = 15
)

// chaosPrincipal adds the service principal of the type-1 identity to the emulated world.
func chaosPrincipal(c *emulator.Config) {
	c.UserAssignedIdentities = append(c.UserAssignedIdentities, emulator.IdentityConfig{Name: azStdAlt})
	c.ServicePrincipals = append(c.ServicePrincipals, emulator.PrincipalConfig{AppID: spAppID, Secrets: []string{spSecret}})
}

// setupKinds creates the service principal's Secret, identity and binding, and the CronJob.
func (w *workload) setupKinds(ctx context.Context) ([]client.Object, error) {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: spSecretRef}, StringData: map[string]string{"clientSecret": spSecret}}
	sp := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: "sp"}, Spec: aadv1.AzureIdentitySpec{
		Type: aadv1.ServicePrincipal, ClientID: spAppID, TenantID: w.sb.Emulator.Config().TenantID,
		ClientPassword: corev1.SecretReference{Namespace: nsA, Name: spSecretRef}}}
	w.clientID = append(w.clientID, spAppID)
	b := binding(nsA, "bind-sp", "sp", "sel-sp", "")
	w.bindings[b.Namespace+"/"+b.Name] = b
	alt, err := w.sb.Emulator.Identity(azStdAlt)
	if err != nil {
		return nil, fmt.Errorf("identity %s is not in the emulated world: %w", azStdAlt, err)
	}
	w.clientID = append(w.clientID, alt.ClientID)
	cron := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: nsB, Name: "cron-b"}, Spec: batchv1.CronJobSpec{
		Schedule: "* * * * *", ConcurrencyPolicy: batchv1.ForbidConcurrent,
		SuccessfulJobsHistoryLimit: ptr.To(int32(1)), FailedJobsHistoryLimit: ptr.To(int32(1)),
		JobTemplate: batchv1.JobTemplateSpec{Spec: jobSpec("sel-b", "", corev1.RestartPolicyOnFailure)}}}
	return []client.Object{sec, sp, b.DeepCopy(), cron}, nil
}

// jobSpec is a Job whose one pod asks for one token (naming clientID when set) and exits:
// 0 with a token, 1 without (retried by restartPolicy OnFailure, failing the pod with Never).
func jobSpec(sel, clientID string, policy corev1.RestartPolicy) batchv1.JobSpec {
	spec := podSpec("", clientID)
	spec.RestartPolicy = policy
	spec.Containers[0].Command = []string{"sh", "-c", "az account get-access-token && sleep 3"}
	labels := map[string]string{"chaos": "job"}
	if sel != "" {
		labels[aadv1.PodLabelKey] = sel
	}
	return batchv1.JobSpec{BackoffLimit: ptr.To(int32(1)), TTLSecondsAfterFinished: ptr.To(int32(jobTTL)),
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}}
}

// createJob starts a Job in a random namespace, bound or not, with a random restartPolicy.
func (w *workload) createJob(ctx context.Context) error {
	var jobs batchv1.JobList
	if err := w.c.List(ctx, &jobs, client.MatchingLabels{"chaos": "job"}); err != nil {
		return err
	}
	active := 0
	for _, j := range jobs.Items {
		if j.Status.CompletionTime == nil && j.Status.Failed == 0 {
			active++
		}
	}
	if active >= maxJobs {
		return nil
	}
	w.seq++
	ns := []string{nsA, nsB}[w.rnd.IntN(2)]
	policy := []corev1.RestartPolicy{corev1.RestartPolicyNever, corev1.RestartPolicyOnFailure}[w.rnd.IntN(2)]
	cid := ""
	if w.rnd.IntN(3) == 0 {
		cid = w.clientID[w.rnd.IntN(len(w.clientID))]
	}
	j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "job-" + strconv.Itoa(w.seq), Labels: map[string]string{"chaos": "job"}},
		Spec: jobSpec(selectors[w.rnd.IntN(len(selectors))], cid, policy)}
	return w.wr.Create(ctx, j)
}

// switchIdentity points std-b at the other Azure identity (client and resource ID), or back:
// the pods bound to std-b change identity without any change to themselves or their binding.
func (w *workload) switchIdentity(ctx context.Context) error {
	var id aadv1.AzureIdentity
	if err := w.c.Get(ctx, client.ObjectKey{Namespace: nsB, Name: "std-b"}, &id); err != nil {
		return err
	}
	to := azStdAlt
	if alt, err := w.sb.Emulator.Identity(azStdAlt); err == nil && id.Spec.ClientID == alt.ClientID {
		to = azStdB
	}
	want, err := w.sb.IdentityObject(nsB, "std-b", to)
	if err != nil {
		return err
	}
	id.Spec.ClientID, id.Spec.ResourceID = want.Spec.ClientID, want.Spec.ResourceID
	return w.wr.Update(ctx, &id)
}

// toggleIdentity deletes the AzureIdentity std-b (MIC must take its identity off the VMs/VMSS and
// NMI stop serving it to dep-b's pods, whose binding stays), or re-creates it.
func (w *workload) toggleIdentity(ctx context.Context) (string, error) {
	var id aadv1.AzureIdentity
	err := w.c.Get(ctx, client.ObjectKey{Namespace: nsB, Name: "std-b"}, &id)
	if apierrors.IsNotFound(err) {
		to := w.stdBTarget
		if to == "" {
			to = azStdB
		}
		want, err := w.sb.IdentityObject(nsB, "std-b", to)
		if err != nil {
			return "identity-create", err // deleted in Azure just now (a fault): next time
		}
		return "identity-create", w.wr.Create(ctx, want)
	}
	if err != nil {
		return "identity-delete", err
	}
	w.stdBTarget = azStdB
	if alt, err := w.sb.Emulator.Identity(azStdAlt); err == nil && strings.EqualFold(id.Spec.ClientID, alt.ClientID) {
		w.stdBTarget = azStdAlt
	}
	return "identity-delete", client.IgnoreNotFound(w.wr.Delete(ctx, &id))
}

// toggleNamespaced turns std-a's namespaced matching on or off: dep-cross (in the other
// namespace, label sel-a) is bound to it only while it is off.
func (w *workload) toggleNamespaced(ctx context.Context) error {
	var id aadv1.AzureIdentity
	if err := w.c.Get(ctx, client.ObjectKey{Namespace: nsA, Name: "std-a"}, &id); err != nil {
		return err
	}
	if id.Annotations[aadv1.BehaviorKey] == aadv1.BehaviorNamespaced {
		delete(id.Annotations, aadv1.BehaviorKey)
	} else {
		if id.Annotations == nil {
			id.Annotations = map[string]string{}
		}
		id.Annotations[aadv1.BehaviorKey] = aadv1.BehaviorNamespaced
	}
	return w.wr.Update(ctx, &id)
}

// reuseIP deletes a running bound pod and at once creates, on the same node and with the same
// IP (the agent's PodIPAnnotation), an unbound pod in the other namespace: NMI must not serve the
// new pod the old pod's identities, however late its view of the deletion.
func (w *workload) reuseIP(ctx context.Context) error {
	pods, err := w.pods(ctx, false)
	if err != nil {
		return err
	}
	var cands []corev1.Pod
	for _, p := range pods {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.Spec.NodeName != "" &&
			(p.Labels[aadv1.PodLabelKey] != "" || p.Spec.ServiceAccountName == fedSA) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	old := cands[w.rnd.IntN(len(cands))]
	if err := w.wr.Delete(ctx, &old); err != nil {
		return client.IgnoreNotFound(err)
	}
	ns := nsA
	if old.Namespace == nsA {
		ns = nsB
	}
	w.seq++
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reuse-" + strconv.Itoa(w.seq),
		Labels: map[string]string{"chaos": "bare"}, Annotations: map[string]string{agent.PodIPAnnotation: old.Status.PodIP}},
		Spec: podSpec("", "")}
	p.Spec.NodeName = old.Spec.NodeName
	return w.wr.Create(ctx, p)
}
