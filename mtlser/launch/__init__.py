"""The job launcher of stages 3-4: Kaldi's run.pl/slurm.pl interface, locally or on Slurm.

``python -m mtlser.launch [--backend local|slurm] ... JOB=1:N LOG command...`` runs an array of
jobs (:mod:`mtlser.launch.jobs`; Slurm's settings, job script and requeue: :mod:`mtlser.launch.slurm`);
``python -m mtlser.launch.nth_fold`` maps a job's number to its fold. Recipes reach it through
cmd.sh (``train_cmd``/``decode_cmd``) and utils/run_{local,slurm}.sh. It imports no other mtlser
package than :mod:`mtlser.utils`: the trainer's fold-dir lock and the launcher's log locks are
:mod:`mtlser.utils.lock`.
"""
