"""The recipe's names: what ``egs/TEMPLATE/ser.sh`` asks Python instead of deriving in shell.

For the options of one run, :mod:`mtlser.recipe.names` gives the folds dir, the token set and its token
list, the experiment dirs (one per lambda of a sweep) with their config overrides, and the fold list;
``python -m mtlser.recipe`` prints them as shell assignments for ser.sh to ``eval``. The rules stay with
their owners (token sets: :mod:`mtlser.text.tokenize`, fold names: :mod:`mtlser.data.fold_names`);
the ones no other module needs (folds dir per valid choice, experiment tags) live here. What stage 3
records of a run's options, and how stages 4-6 run alone find that run again: :mod:`mtlser.recipe.options`.
"""
