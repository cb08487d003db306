import os
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
import sa_tenancy

class Base(DeclarativeBase): pass
class Note(Base):  # declared without a schema: a tenant table
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))

engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///demo_data/app.db"))
SessionLocal = sessionmaker(engine)
sa_tenancy.install(SessionLocal, strategy="auto", require=True)
for tenant in ("acme", "globex"):
    sa_tenancy.create_tenant(engine, tenant, metadata=Base.metadata, exist_ok=True)
    with SessionLocal(info={"schema": tenant}) as session:
        session.add(Note(body=f"hello from {tenant}"))
        session.commit()
        print(tenant, "->", session.scalars(select(Note.body)).all())
