defmodule Sandbox.Cluster do
  @moduledoc """
  One sandbox on many nodes: created everywhere or nowhere, reloaded in two
  phases, reconciled after a partition.

  The transport is Erlang distribution itself: every operation calls this
  module's functions on the nodes it names (`:erpc`), each node runs its
  own copy of the sandbox (its own `Sandbox.Instance`, version history and
  processes), and the nodes are always given explicitly. Every node needs
  this library's code and the `:sandbox` application running; the calling
  node may or may not run a copy itself.

      {:ok, infos} = Sandbox.Cluster.create_sandbox(nodes, "shop", :shop, sandbox_path: path)
      {:ok, 1} = Sandbox.Cluster.call(hd(nodes), "shop", Shop.Cart, :count, [])
      {:ok, _per_node} = Sandbox.Cluster.hot_reload(nodes, "shop", {:file, file})
      {:ok, _per_node} = Sandbox.Cluster.reconcile(nodes, "shop")

  ## Create

  `create_sandbox/4` compiles once, on the calling node (in a compile
  worker, `Sandbox.IsolatedCompiler`), ships the BEAMs (original names) and
  the sandbox's environment, and every node relocates, loads and starts
  its own copy (`Sandbox.create_sandbox/3`'s `:prebuilt` option: nothing is
  compiled there). When this node runs sandbox `id` itself, or with
  `from: node`, the copies are made from that copy as it is now (the
  current version of every module, its current environment), not from a
  new build: that is how a node that joins later gets the sandbox.

  It is all or nothing, in two steps: every node creates its copy and
  holds it, then the calling node confirms every copy. A node that fails,
  or does not answer within the timeout, fails the create: every copy made
  is destroyed (a node that does not hear the confirmation within its lease,
  or loses the calling node, destroys its own).

  ## Two-phase hot reload

  `hot_reload/4` first *prepares* the change on every node at once (built,
  validated and relocated there; code prepared for loading; the affected
  processes suspended and their states captured — see
  `Sandbox.StatePreservation.prepare/2`), then *commits* it everywhere
  (load, migrate, resume). While prepared, the node's sandbox serves reads
  and queues other changes; a prepared change aborts itself when the
  coordinating process goes away or its node becomes unreachable, after a
  lease of twice the phase timeout, or when a suspended process dies.

    * A node that fails to prepare fails the reload and changes nothing on
      any node: the others are aborted (`:aborted`).
    * A node that cannot be reached while preparing (down, partitioned, or
      no answer within `timeout`) is reported `{:unreachable, node}`; the
      reachable nodes go ahead. `reconcile/2` brings it up to date later.
    * A node that fails during the commit is reported (its reason, or
      `{:unreachable, node}` when it died or stopped answering) and the
      nodes that already committed are reverted to the previous version
      (`:rolled_back`), so versions never diverge silently. A node whose
      commit outcome is unknown (it did not answer) is sent the revert too.

  Version history stays per node (`versions/3`). Every change records a
  stamp for the modules it changes (see `Sandbox.Instance`); a cluster
  reload's is one higher than every prepared copy's, so the latest change
  anywhere has the highest stamp. Reload events of a cluster reload carry
  `trigger: :cluster`.

  ## Partitions and reconcile

  Unreachable nodes are reported as `{:unreachable, node}` within the
  operation's `timeout`; nothing waits longer. `reconcile/2` compares the
  current checksum of every module on every node, takes for each module
  the copy with the highest stamp, and reloads each lagging node with those
  BEAMs as one normal reload (state migration with `code_change/3` or the
  `:state_migration` option). Modules a node lacks are added; modules
  removed on some nodes only (by a local reload) are not removed elsewhere.

  ## The cluster's view

  A create makes a cluster: every copy it confirms joins the `:pg` group
  `{:sandbox, id, cluster}` (scope `Sandbox.Cluster`, started with the
  application), `cluster` being a term made by that create. Copies made
  later from one of them join the same group; the same id created again
  on other nodes is another cluster, and neither sees the other. A copy
  leaves its group when it is destroyed, and when its node goes down or
  becomes unreachable, so `nodes/1` lists the copies of a cluster that a
  node can reach; `monitor/1` reports the changes.

  ## Reasons

  Per node: `{:unreachable, node}`; `{:sandbox_unavailable, :not_loaded}`
  (the node does not have this library's code) or
  `{:sandbox_unavailable, :not_started}` (the `:sandbox` application is not
  running there); `{:exception, reason}`, `{:exit, reason}` for an
  unexpected failure of the remote call; otherwise the reason the node's
  own `Sandbox` function gave (`:not_found`, `{:already_exists, id}`, …).
  Invalid ids are `{:error, {:invalid_id, id}}` before anything is done;
  wrong argument types raise `ArgumentError`.
  """

  alias Sandbox.{Config, Instance, IsolatedCompiler, Manager}

  @scope __MODULE__
  @timeout 15_000
  @id_pattern ~r/\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\z/

  @typedoc "What went wrong on one node (see \"Reasons\")."
  @type node_reason :: {:unreachable, node} | term

  @typedoc "A sandbox id (see `Sandbox`)."
  @type id :: String.t()

  ## The cluster's view

  @doc """
  The nodes of the cluster of sandbox `id` that this node can reach,
  sorted: the cluster of this node's copy when it has one (made by
  `create_sandbox/4`), else the nodes of every cluster of `id` it can
  reach.
  """
  @spec nodes(id) :: [node]
  def nodes(id) do
    groups =
      case local_clusters(id) do
        [] -> for {:sandbox, ^id, _} = g <- :pg.which_groups(@scope), do: g
        clusters -> Enum.map(clusters, &group(id, &1))
      end

    groups
    |> Enum.flat_map(&:pg.get_members(@scope, &1))
    |> Enum.map(&node/1)
    |> Enum.uniq()
    |> Enum.sort()
  end

  @doc """
  Subscribes the caller to changes of the views: returns `{ref,
  nodes(id)}`, then sends `{ref, :join | :leave, {:sandbox, id, cluster},
  pids}` whenever copies (their instances: `node/1` of each is its node)
  join or leave the view of any sandbox — match on the id. End with
  `demonitor/1`.
  """
  @spec monitor(id) :: {reference, [node]}
  def monitor(id) do
    {ref, _groups} = :pg.monitor_scope(@scope)
    {ref, nodes(id)}
  end

  @doc "Ends a subscription made with `monitor/1`."
  @spec demonitor(reference) :: :ok | false
  def demonitor(ref), do: :pg.demonitor(@scope, ref)

  defp group(id, cluster), do: {:sandbox, id, cluster}

  defp local_clusters(id),
    do: for({:sandbox, ^id, cluster} <- :pg.which_local_groups(@scope), do: cluster)

  ## Create, destroy, info, call

  @doc """
  Creates sandbox `id` on every node of `nodes`, all or nothing (see
  "Create").

  `module_or_app` and `opts` are those of `Sandbox.create_sandbox/3`
  (`:sandbox_path` is required unless the copies come from an existing
  one), plus:

  ## Options

    * `:timeout` — ms each node may take to create its copy, and to confirm
      it (15,000)
    * `:from` — a node whose copy of `id` the new copies are made from (by
      default this node's, when it has one; otherwise a new build)

  Returns `{:ok, %{node => info}}` or `{:error, reason}`: the compile's and
  `Sandbox.Config`'s errors, `{:target_mismatch, target}` (the existing
  copy runs another target), the export's errors (`:not_found`, …) or
  `{:create_failed, %{node => node_reason}}` naming each node that failed.
  """
  @spec create_sandbox([node], id, atom, keyword) ::
          {:ok, %{node => Sandbox.info()}} | {:error, term}
  def create_sandbox(nodes, id, module_or_app, opts \\ []) do
    with :ok <- check_id(id) do
      nodes = check_nodes!(nodes)
      check_keyword!(opts)
      {timeout, opts} = pop_timeout(opts)
      {from, opts} = Keyword.pop(opts, :from)
      check!(is_nil(from) or is_atom(from), "a node (atom) for :from", from)

      with {:ok, cluster, build, opts} <- source(id, module_or_app, from, opts, timeout) do
        coordinate(fn ->
          create_everywhere(nodes, id, module_or_app, {cluster, build}, opts, timeout)
        end)
      end
    end
  end

  # Where the copies come from: another node's copy, this node's, or a new
  # build of `opts[:sandbox_path]`.
  defp source(id, target, from, opts, timeout) when from != nil do
    case pcall([{from, :local_export, [id]}], timeout) do
      %{^from => {:ok, {:ok, export}}} -> from_export(export, target, opts)
      %{^from => {:ok, {:error, reason}}} -> {:error, reason}
      %{^from => {:error, reason}} -> {:error, reason}
    end
  end

  defp source(id, target, nil, opts, _timeout) do
    case local_export(id) do
      {:ok, export} -> from_export(export, target, opts)
      {:error, _} -> build(target, opts)
    end
  end

  defp from_export(%{target: target} = export, target, opts),
    do: {:ok, export.cluster, export.build, Keyword.merge(export.options, opts)}

  defp from_export(%{target: other}, _target, _opts), do: {:error, {:target_mismatch, other}}

  defp build(_target, opts) do
    with {:ok, config} <- Config.validate(opts),
         {:ok, info} <-
           IsolatedCompiler.compile_sandbox(config.sandbox_path, compile_opts(config)) do
      stamp = {1, System.os_time(:microsecond), node()}

      {:ok, new_cluster(),
       %{
         modules: info.modules,
         app: info.app,
         app_env: info.app_env,
         config: info.config,
         stamps: Map.new(info.modules, fn {m, _} -> {m, stamp} end)
       }, opts}
    end
  end

  # As the instance compiles (Sandbox.Instance): only the compiled modules
  # are needed, and the change set validates every BEAM.
  defp compile_opts(config) do
    [
      compile_timeout: config.compile_timeout,
      compile_limits: config.compile_limits,
      write_artifacts: false,
      validate_beams: false,
      confine: Sandbox.Config.compile_confinement(config.security_profile)
    ]
  end

  defp new_cluster, do: {node(), System.os_time(:microsecond), :erlang.unique_integer()}

  defp create_everywhere(nodes, id, target, {cluster, build}, opts, timeout) do
    ref = make_ref()
    args = [id, target, [prebuilt: build] ++ opts, {self(), ref, cluster}, 2 * timeout]
    results = pcall(for(n <- nodes, do: {n, :local_create, args}), timeout)

    {created, failed} =
      Enum.reduce(results, {%{}, %{}}, fn
        {n, {:ok, {:ok, info, held}}}, {ok, bad} -> {Map.put(ok, n, {info, held}), bad}
        {n, {:ok, {:error, reason}}}, {ok, bad} -> {ok, Map.put(bad, n, reason)}
        {n, {:error, reason}}, {ok, bad} -> {ok, Map.put(bad, n, reason)}
      end)

    failed = if failed == %{}, do: confirm(created, ref, timeout), else: failed

    if failed == %{} do
      {:ok, Map.new(created, fn {n, {info, _}} -> {n, info} end)}
    else
      discard = for {n, {_, held}} <- created, do: {n, :local_discard, [id, ref, held, timeout]}
      pcall(discard, timeout)
      {:error, {:create_failed, failed}}
    end
  end

  # Confirms every held copy; the nodes that do not acknowledge in time.
  defp confirm(created, ref, timeout) do
    for {_n, {_, %{holder: holder}}} <- created, do: send(holder, {ref, :confirm, self()})
    deadline = now() + timeout

    Enum.reduce(created, %{}, fn {n, _}, missing ->
      receive do
        {^ref, :confirmed, ^n} -> missing
      after
        max(deadline - now(), 0) -> Map.put(missing, n, {:unreachable, n})
      end
    end)
  end

  @doc """
  Destroys sandbox `id` on every node of `nodes`: `%{node => :ok | {:error,
  reason}}` (`:not_found` where there is no copy).
  """
  @spec destroy_sandbox([node], id) ::
          %{node => :ok | {:error, node_reason}} | {:error, {:invalid_id, term}}
  def destroy_sandbox(nodes, id) do
    with :ok <- check_id(id) do
      nodes |> check_nodes!() |> each(:local_destroy, [id], @timeout) |> flatten()
    end
  end

  @doc """
  The info of each node's copy of sandbox `id` (`Sandbox.get_sandbox_info/1`
  there): `%{node => {:ok, info} | {:error, reason}}`.
  """
  @spec info([node], id) ::
          %{node => {:ok, Sandbox.info()} | {:error, node_reason}} | {:error, {:invalid_id, term}}
  def info(nodes, id) do
    with :ok <- check_id(id) do
      nodes |> check_nodes!() |> each(:local_info, [id], @timeout) |> flatten()
    end
  end

  @doc """
  `Sandbox.call/5` on `node`'s copy of sandbox `id`: its results, plus
  `{:error, {:unreachable, node}}` and `{:error, {:sandbox_unavailable, _}}`.
  `opts` are those of `Sandbox.call/5`; the remote call is given the call's
  `:timeout` plus 5 s.
  """
  @spec call(node, id, module, atom, [term], keyword) :: Sandbox.result() | {:error, node_reason}
  def call(node, id, module, function, args, opts \\ []) do
    with :ok <- check_id(id) do
      check!(is_atom(node), "a node (atom)", node)
      check!(is_atom(module) and module not in [nil, true, false], "a module (atom)", module)
      check!(is_atom(function), "a function name (atom)", function)
      check!(is_list(args), "a list of arguments", args)
      check_keyword!(opts)

      timeout =
        case Keyword.get(opts, :timeout, 5_000) do
          :infinity ->
            :infinity

          t when is_integer(t) and t > 0 ->
            t + 5_000

          other ->
            raise ArgumentError, "expected :timeout to be a timeout, got: #{inspect(other)}"
        end

      case pcall([{node, :local_call, [id, module, function, args, opts]}], timeout) do
        %{^node => {:ok, result}} -> result
        %{^node => {:error, reason}} -> {:error, reason}
      end
    end
  end

  ## Versions

  @doc """
  The kept versions of `module` (original name) of sandbox `id` on each
  node, oldest first (`Sandbox.list_module_versions/2` there):
  `%{node => [module_version] | {:error, reason}}` (`:not_found` where
  there is no copy).
  """
  @spec versions([node], id, module) ::
          %{node => [Sandbox.module_version()] | {:error, node_reason}}
          | {:error, {:invalid_id, term}}
  def versions(nodes, id, module) do
    with :ok <- check_id(id) do
      check!(is_atom(module) and module not in [nil, true, false], "a module (atom)", module)

      nodes
      |> check_nodes!()
      |> each(:local_versions, [id, module], @timeout)
      |> flatten()
    end
  end

  ## Hot reload

  @doc """
  Hot reloads sandbox `id` on every node of `nodes` in two phases (see
  "Two-phase hot reload").

  `source` is what `Sandbox.hot_reload_sandbox/3` takes (a BEAM or a list
  of BEAMs, one change) or what `Sandbox.hot_reload_source/3` takes
  (`{:file, path}`, `{:code, string}`): a source is compiled once, on this
  node, in the context of the sandbox's project (this node's copy, else
  the first node that answers), and the modules it produces are shipped.

  ## Options

  The reload options of `Sandbox.hot_reload_sandbox/3` (`:state_migration`
  — a function every node can call, so a function of a module loaded on
  every node —, `:suspend_timeout`, `:rollback_window`), plus:

    * `:timeout` — ms each node may take for each phase (15,000); a node
      that takes longer is `{:unreachable, node}`

  ## Results

  `{:ok, %{node => :hot_reloaded | :unchanged}}` when every node has the
  change; otherwise `{:error, %{node => outcome}}` with each node's
  outcome: `:hot_reloaded` or `:unchanged` (reachable nodes that went
  ahead while others were unreachable), `:aborted` (prepared, then
  abandoned because another node failed to prepare), `:rolled_back`
  (committed, then reverted because another node failed to commit),
  `{:rollback_failed, reason}`, `{:unreachable, node}`, or the node's own
  reload error. Errors before any node is involved: `{:error, reason}` —
  the reload option errors, `:no_beams`, `:no_project` (no node could say
  where the project is) and the compiler's errors.
  """
  @spec hot_reload(
          [node],
          id,
          binary | [binary] | {:file, Path.t()} | {:code, String.t()},
          keyword
        ) ::
          {:ok, %{node => :hot_reloaded | :unchanged}} | {:error, term}
  def hot_reload(nodes, id, source, opts \\ []) do
    with :ok <- check_id(id) do
      nodes = check_nodes!(nodes)
      check_keyword!(opts)
      {timeout, opts} = pop_timeout(opts)

      with {:ok, _} <- Config.reload_options(opts),
           {:ok, beams} <- beams(nodes, id, source, timeout) do
        if beams == [],
          do: {:ok, Map.new(nodes, &{&1, :unchanged})},
          else: coordinate(fn -> two_phase(nodes, id, beams, opts, timeout) end)
      end
    end
  end

  defp beams(_nodes, _id, beam, _timeout) when is_binary(beam), do: {:ok, [beam]}
  defp beams(_nodes, _id, [], _timeout), do: {:error, :no_beams}

  defp beams(_nodes, _id, beams, _timeout) when is_list(beams) do
    check!(Enum.all?(beams, &is_binary/1), "a BEAM or a list of BEAMs", beams)
    {:ok, beams}
  end

  defp beams(nodes, id, {kind, value} = source, timeout)
       when kind in [:file, :code] and is_binary(value) do
    with {:ok, {root, compile_opts}} <- project(nodes, id, timeout),
         {:ok, info} <- Sandbox.compile_source(source, root, compile_opts) do
      {:ok, Enum.map(info.recompiled_modules, &elem(&1, 1))}
    end
  end

  defp beams(_nodes, _id, other, _timeout) do
    raise ArgumentError,
          "expected a BEAM, a list of BEAMs, {:file, path} or {:code, string}, got: #{inspect(other)}"
  end

  # Where the sandbox's project is, and how it is compiled: this node's
  # copy, else the first node that answers.
  defp project(nodes, id, timeout) do
    case local_project(id) do
      {:ok, project} ->
        {:ok, project}

      {:error, _} ->
        nodes
        |> each(:local_project, [id], timeout)
        |> Enum.find_value({:error, :no_project}, fn
          {_n, {:ok, {:ok, project}}} -> {:ok, project}
          _ -> nil
        end)
    end
  end

  defp two_phase(nodes, id, beams, opts, timeout) do
    ref = make_ref()

    outcomes =
      nodes
      |> each(:local_prepare, [id, ref, beams, opts, self(), 2 * timeout], timeout)
      |> Map.new(fn
        {n, {:ok, {:ok, :prepared, counter}}} -> {n, {:prepared, counter}}
        {n, {:ok, {:ok, :unchanged, counter}}} -> {n, {:unchanged, counter}}
        {n, {:ok, {:error, reason}}} -> {n, {:failed, reason}}
        {n, {:error, {:unreachable, _} = reason}} -> {n, {:unreachable, reason}}
        {n, {:error, reason}} -> {n, {:failed, reason}}
      end)

    prepared = for {n, {:prepared, _}} <- outcomes, do: n

    if Enum.any?(outcomes, &match?({_, {:failed, _}}, &1)) do
      # A failure while preparing changes nothing anywhere.
      each(prepared, :local_abort, [id, ref], timeout)

      {:error,
       Map.new(outcomes, fn
         {n, {:prepared, _}} -> {n, :aborted}
         {n, {:unchanged, _}} -> {n, :unchanged}
         {n, {_, reason}} -> {n, reason}
       end)}
    else
      counter =
        Enum.max(for({_, {kind, c}} <- outcomes, kind != :unreachable, do: c), fn -> 0 end)

      stamp = {counter + 1, System.os_time(:microsecond), node()}
      commits = each(prepared, :local_commit, [id, ref, stamp], timeout)

      failed =
        for {n, result} <- commits,
            result != {:ok, {:ok, :hot_reloaded}},
            into: %{},
            do: {n, result}

      final =
        if failed == %{} do
          Map.new(prepared, &{&1, :hot_reloaded})
        else
          # Those that committed go back; those whose outcome is unknown
          # are sent the revert too.
          revert_stamp = {counter + 2, System.os_time(:microsecond), node()}
          reverts = each(prepared, :local_revert, [id, ref, revert_stamp], timeout)

          Map.new(prepared, fn n ->
            case {failed, reverts[n]} do
              {%{^n => {:ok, {:error, reason}}}, _} -> {n, reason}
              {%{^n => {:error, reason}}, _} -> {n, reason}
              {_, {:ok, {:ok, _}}} -> {n, :rolled_back}
              {_, {:ok, {:error, reason}}} -> {n, {:rollback_failed, reason}}
              {_, {:error, reason}} -> {n, {:rollback_failed, reason}}
            end
          end)
        end

      result =
        Map.merge(
          final,
          for({n, {kind, o}} <- outcomes, kind != :prepared, into: %{}, do: {n, outcome(kind, o)})
        )

      if Enum.all?(result, fn {_, o} -> o in [:hot_reloaded, :unchanged] end),
        do: {:ok, result},
        else: {:error, result}
    end
  end

  defp outcome(:unchanged, _counter), do: :unchanged
  defp outcome(:unreachable, reason), do: reason

  ## Reconcile

  @doc """
  Brings every lagging copy of sandbox `id` on `nodes` to the newest
  version of each module (see "Partitions and reconcile"), each node with
  one normal reload.

  ## Options

  The reload options (`:state_migration`, `:suspend_timeout`,
  `:rollback_window`) and `:timeout` (ms per node per step, 15,000).

  Returns `{:ok, %{node => :hot_reloaded | :unchanged}}`, or
  `{:error, %{node => outcome}}` when a node could not be read or reloaded
  (the others' outcomes included), or `{:error, reason}` for invalid
  options.
  """
  @spec reconcile([node], id, keyword) ::
          {:ok, %{node => :hot_reloaded | :unchanged}} | {:error, term}
  def reconcile(nodes, id, opts \\ []) do
    with :ok <- check_id(id) do
      nodes = check_nodes!(nodes)
      check_keyword!(opts)
      {timeout, opts} = pop_timeout(opts)

      with {:ok, _} <- Config.reload_options(opts) do
        coordinate(fn -> reconcile_nodes(nodes, id, opts, timeout) end)
      end
    end
  end

  defp reconcile_nodes(nodes, id, opts, timeout) do
    states = each(nodes, :local_cluster_state, [id], timeout)
    readable = for {n, {:ok, {:ok, modules}}} <- states, into: %{}, do: {n, modules}

    unreadable =
      for {n, result} <- states, not Map.has_key?(readable, n), into: %{} do
        case result do
          {:ok, {:error, reason}} -> {n, reason}
          {:error, reason} -> {n, reason}
        end
      end

    # For each module, the newest copy: the highest stamp.
    newest =
      for {n, modules} <- readable, {m, v} <- modules, reduce: %{} do
        acc ->
          case acc do
            %{^m => {_, best}} when best.stamp >= v.stamp -> acc
            _ -> Map.put(acc, m, {n, v})
          end
      end

    # What each lagging node needs: %{node => %{module => {from, stamp}}}.
    plan =
      for {n, modules} <- readable,
          {m, {from, best}} <- newest,
          not match?(%{^m => %{checksum: c}} when c == best.checksum, modules),
          reduce: %{} do
        acc -> Map.update(acc, n, %{m => {from, best.stamp}}, &Map.put(&1, m, {from, best.stamp}))
      end

    wanted =
      for {_n, needs} <- plan, {m, {from, _}} <- needs, reduce: %{} do
        acc -> Map.update(acc, from, MapSet.new([m]), &MapSet.put(&1, m))
      end

    fetched =
      wanted
      |> Enum.map(fn {from, ms} -> {from, :local_beams, [id, MapSet.to_list(ms)]} end)
      |> pcall(timeout)

    reloads =
      for {n, needs} <- plan do
        beams =
          for {m, {from, _}} <- needs do
            case fetched[from] do
              {:ok, {:ok, %{^m => beam}}} -> {:ok, beam}
              _ -> {:error, {:unreachable, from}}
            end
          end

        case Enum.find(beams, &match?({:error, _}, &1)) do
          nil ->
            stamps = Map.new(needs, fn {m, {_, stamp}} -> {m, stamp} end)
            call_opts = [cluster_stamps: stamps] ++ opts
            {n, :local_reload, [id, Enum.map(beams, &elem(&1, 1)), call_opts]}

          {:error, reason} ->
            {n, {:failed, reason}}
        end
      end

    {calls, not_fetched} = Enum.split_with(reloads, &match?({_, _, _}, &1))

    results =
      calls
      |> pcall(timeout)
      |> Map.new(fn
        {n, {:ok, {:ok, outcome}}} -> {n, outcome}
        {n, {:ok, {:error, reason}}} -> {n, reason}
        {n, {:error, reason}} -> {n, reason}
      end)
      |> Map.merge(Map.new(not_fetched, fn {n, {:failed, reason}} -> {n, reason} end))

    result =
      readable
      |> Map.new(fn {n, _} -> {n, Map.get(results, n, :unchanged)} end)
      |> Map.merge(unreadable)

    if Enum.all?(result, fn {_, o} -> o in [:hot_reloaded, :unchanged] end),
      do: {:ok, result},
      else: {:error, result}
  end

  ## On each node (called through :erpc)

  @doc false
  def local_create(id, target, opts, {coordinator, ref, cluster}, lease) do
    with :ok <- running(),
         {:ok, info} <- Sandbox.create_sandbox(id, target, opts),
         {:ok, instance, _} <- Manager.lookup(id) do
      holder = spawn(fn -> hold(id, instance, {coordinator, ref, cluster}, lease) end)
      {:ok, info, %{holder: holder, instance: instance}}
    end
  end

  # A new copy waits for the coordinator's confirmation; without it (a
  # cancel, the coordinator gone or unreachable, the lease over) it goes.
  defp hold(id, instance, {coordinator, ref, cluster}, lease) do
    mon = Process.monitor(coordinator)

    receive do
      {^ref, :confirm, from} ->
        :ok = :pg.join(@scope, group(id, cluster), instance)
        send(from, {ref, :confirmed, node()})

      {^ref, :cancel} ->
        destroy_copy(id, instance)

      {:DOWN, ^mon, :process, _, _} ->
        destroy_copy(id, instance)
    after
      lease -> destroy_copy(id, instance)
    end
  end

  defp destroy_copy(id, instance) do
    case Manager.lookup(id) do
      {:ok, ^instance, _} -> Sandbox.destroy_sandbox(id)
      _ -> :ok
    end
  end

  @doc false
  def local_discard(id, ref, %{holder: holder, instance: instance}, timeout) do
    mon = Process.monitor(holder)
    send(holder, {ref, :cancel})

    receive do
      {:DOWN, ^mon, :process, _, _} -> :ok
    after
      timeout -> Process.exit(holder, :kill)
    end

    destroy_copy(id, instance)
    :ok
  end

  # The copy's export, with its cluster: a copy that has none yet (made by
  # Sandbox.create_sandbox/3) starts one, and joins it.
  @doc false
  def local_export(id) do
    with_local(id, fn pid ->
      with {:ok, export} <- Instance.export(pid) do
        cluster =
          case local_clusters(id) do
            [cluster | _] ->
              cluster

            [] ->
              cluster = new_cluster()
              :ok = :pg.join(@scope, group(id, cluster), pid)
              cluster
          end

        {:ok, Map.put(export, :cluster, cluster)}
      end
    end)
  end

  @doc false
  def local_project(id), do: with_local(id, &Instance.versions(&1, :project))

  @doc false
  def local_destroy(id), do: with_running(fn -> Sandbox.destroy_sandbox(id) end)

  @doc false
  def local_info(id), do: with_running(fn -> Sandbox.get_sandbox_info(id) end)

  @doc false
  def local_call(id, module, function, args, opts),
    do: with_running(fn -> Sandbox.call(id, module, function, args, opts) end)

  @doc false
  def local_versions(id, module) do
    with_local(id, fn pid ->
      case Instance.versions(pid, {:versions, module}) do
        list when is_list(list) -> list
        error -> error
      end
    end)
  end

  @doc false
  def local_prepare(id, ref, beams, opts, coordinator, lease),
    do: with_local(id, &Instance.prepare(&1, ref, beams, opts, coordinator, lease))

  @doc false
  def local_commit(id, ref, stamp), do: with_local(id, &Instance.commit(&1, ref, stamp))

  @doc false
  def local_abort(id, ref), do: with_local(id, &Instance.abort(&1, ref))

  @doc false
  def local_revert(id, ref, stamp), do: with_local(id, &Instance.revert(&1, ref, stamp))

  @doc false
  def local_cluster_state(id), do: with_local(id, &Instance.versions(&1, :cluster))

  @doc false
  def local_beams(id, modules),
    do: with_local(id, &Instance.versions(&1, {:current_beams, modules}))

  @doc false
  def local_reload(id, beams, opts), do: with_local(id, &Instance.hot_reload(&1, beams, opts))

  defp running do
    if Process.whereis(Sandbox.Manager),
      do: :ok,
      else: {:error, {:sandbox_unavailable, :not_started}}
  end

  defp with_running(fun) do
    with :ok <- running(), do: fun.()
  end

  defp with_local(id, fun) do
    with :ok <- running(),
         {:ok, pid, _} when is_pid(pid) <- Manager.lookup(id) do
      try do
        fun.(pid)
      catch
        :exit, _ -> {:error, :not_found}
      end
    else
      {:ok, _, _} -> {:error, :not_found}
      error -> error
    end
  end

  ## Calls

  # Runs `fun` in a process of its own, which coordinates the operation:
  # the copies a prepare or a create holds for it are released as soon as
  # it exits, whatever happens to the caller.
  defp coordinate(fun) do
    caller = self()
    tag = make_ref()
    {pid, mon} = spawn_monitor(fn -> send(caller, {tag, fun.()}) end)

    receive do
      {^tag, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        {:error, {:coordinator_failed, reason}}
    end
  end

  defp each(nodes, fun, args, timeout), do: pcall(for(n <- nodes, do: {n, fun, args}), timeout)

  # Calls `fun(args)` of this module on each node at once, all bounded by
  # one deadline: `%{node => {:ok, result} | {:error, node_reason}}`.
  defp pcall(calls, timeout) do
    deadline = if timeout == :infinity, do: :infinity, else: now() + timeout

    calls
    |> Enum.map(fn {node, fun, args} ->
      {node, fun, :erpc.send_request(node, __MODULE__, fun, args)}
    end)
    |> Map.new(fn {node, fun, req} -> {node, receive_response(node, fun, req, deadline)} end)
  end

  defp receive_response(node, fun, req, deadline) do
    wait = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 0)

    try do
      {:ok, :erpc.receive_response(req, wait)}
    catch
      :error, {:erpc, reason} when reason in [:noconnection, :timeout] ->
        {:error, {:unreachable, node}}

      :error, {:erpc, reason} ->
        {:error, {:erpc, reason}}

      :error, {:exception, :undef, [{__MODULE__, ^fun, _, _} | _]} ->
        {:error, {:sandbox_unavailable, :not_loaded}}

      :error, {:exception, reason, _stacktrace} ->
        {:error, {:exception, reason}}

      :exit, {:exception, reason} ->
        {:error, {:exit, reason}}

      :exit, reason ->
        {:error, {:exit, reason}}

      :throw, value ->
        {:error, {:exit, {:nocatch, value}}}
    end
  end

  # `%{node => {:ok, result}}` of calls whose result is itself tagged.
  defp flatten(results) do
    Map.new(results, fn
      {n, {:ok, result}} -> {n, result}
      {n, {:error, reason}} -> {n, {:error, reason}}
    end)
  end

  defp now, do: System.monotonic_time(:millisecond)

  ## Arguments

  defp check_id(id) do
    if is_binary(id) and Regex.match?(@id_pattern, id), do: :ok, else: {:error, {:invalid_id, id}}
  end

  defp check_nodes!(nodes) do
    check!(
      is_list(nodes) and nodes != [] and Enum.all?(nodes, &(is_atom(&1) and &1 != nil)),
      "a non-empty list of nodes",
      nodes
    )

    Enum.uniq(nodes)
  end

  defp check_keyword!(opts), do: check!(Keyword.keyword?(opts), "a keyword list of options", opts)

  defp pop_timeout(opts) do
    case Keyword.pop(opts, :timeout, @timeout) do
      {t, opts} when is_integer(t) and t > 0 ->
        {t, opts}

      {t, _} ->
        raise ArgumentError, "expected :timeout to be a positive integer, got: #{inspect(t)}"
    end
  end

  defp check!(true, _expected, _value), do: :ok

  defp check!(false, expected, value),
    do: raise(ArgumentError, "expected #{expected}, got: #{inspect(value)}")
end
